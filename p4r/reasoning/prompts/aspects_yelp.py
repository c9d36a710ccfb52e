"""Per-review aspects for restaurants and food places."""

from p4r.reasoning.prompts import Prompt

PROMPT = Prompt(
    version="aspects-yelp-1",
    system=(
        "You read one customer review and record what it reveals about the reviewer's "
        "preferences. Fill a slot only when the review itself gives evidence; otherwise set "
        "the slot and its reason to null. Each reason quotes or paraphrases the evidence in "
        "one short sentence. Answer with a JSON object only."
    ),
    user=(
        "Business: {summary}\n\nReview (rating {rating}): {review}\n\n"
        "Slots:\n"
        "- cuisine_category: the kind of food or place the reviewer came for\n"
        "- specific_dishes_or_attributes: dishes, drinks or attributes mentioned, each with "
        "whether the reviewer liked it\n"
        "- visit_purpose: why they went (date, quick lunch, celebration, ...)\n"
        "- quality_criteria: what they judge the place by (taste, service, value, ...)\n"
        "- visit_context: when, with whom, or in what situation\n"
        "Give each slot a value and a matching <slot>_reason, both null when absent."
    ),
)
