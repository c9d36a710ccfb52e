"""Judge: which persona of a product best explains a user's purchase."""

from p4r.reasoning.prompts import Prompt

PROMPT = Prompt(
    version="align-amazon-1",
    system=(
        "You are a careful judge. Given what a user valued in products they bought before, "
        "pick the one persona of the next product that best matches this user. Base the "
        "choice on the evidence only. Answer with a JSON object only."
    ),
    user=(
        "The user's recent purchases, oldest first:\n{profile}\n\n"
        "Next product: {summary}\n\nIts personas:\n{personas}\n\n"
        "Choose the persona id that best explains why this user buys the next product, and "
        "give a two-sentence reason.\n"
        'Reply as {{"persona_id": "P1", "reason": "..."}}.'
    ),
)
