"""Item summary for products."""

from p4r.reasoning.prompts import Prompt

PROMPT = Prompt(
    version="summary-amazon-1",
    system=(
        "You describe products for a recommender system. Write plainly and objectively, like "
        "a catalogue entry with no marketing language. Use only facts present in the input; "
        "never add or guess a fact, and never contradict the metadata. Answer with a JSON "
        "object only."
    ),
    user=(
        "Write one paragraph (3 to 6 sentences) that summarises this product: what it is, its "
        "category, its main features, and who it is for when the input says so.\n\n"
        "Title: {title}\nSource: {source}\n{body}\n\n"
        'Reply as {{"summary": "..."}}.'
    ),
)
