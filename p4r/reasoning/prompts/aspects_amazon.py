"""Per-review aspects for products."""

from p4r.reasoning.prompts import Prompt

PROMPT = Prompt(
    version="aspects-amazon-1",
    system=(
        "You read one product review and record what it reveals about the buyer's "
        "preferences. Fill a slot only when the review itself gives evidence; otherwise set "
        "the slot and its reason to null. Each reason quotes or paraphrases the evidence in "
        "one short sentence. Answer with a JSON object only."
    ),
    user=(
        "Product: {summary}\n\nReview (rating {rating}): {review}\n\n"
        "Slots:\n"
        "- category_preference: the kind of product the buyer wants\n"
        "- purchase_purpose: why they bought it (gift, daily use, replacement, ...)\n"
        "- quality_criteria: what they judge it by (scent, durability, price, ...)\n"
        "- usage_context: how, when or by whom it is used\n"
        "Give each slot a value and a matching <slot>_reason, both null when absent."
    ),
)
