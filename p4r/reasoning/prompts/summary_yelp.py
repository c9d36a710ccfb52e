"""Item summary for restaurants and food places."""

from p4r.reasoning.prompts import Prompt

PROMPT = Prompt(
    version="summary-yelp-1",
    system=(
        "You describe local businesses for a recommender system. Write plainly and "
        "objectively, like a guidebook entry with no opinions. Use only facts present in the "
        "input; never add or guess a fact, and never contradict the metadata. Answer with a "
        "JSON object only."
    ),
    user=(
        "Write one paragraph (3 to 6 sentences) that summarises this business: what it is, "
        "its cuisine or categories, where it is, its price level, and practical attributes "
        "such as reservations, takeout, seating or parking when the input states them.\n\n"
        "Name: {title}\nSource: {source}\n{body}\n\n"
        'Reply as {{"summary": "..."}}.'
    ),
)
