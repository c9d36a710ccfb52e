"""Judge: which persona of a restaurant best explains a user's visit."""

from p4r.reasoning.prompts import Prompt

PROMPT = Prompt(
    version="align-yelp-1",
    system=(
        "You are a careful judge. Given what a user enjoyed and cared about at places they "
        "visited before, pick the one persona of the next place that best matches this user. "
        "Base the choice on the evidence only. Answer with a JSON object only."
    ),
    user=(
        "The user's recent visits, oldest first:\n{profile}\n\n"
        "Next place: {summary}\n\nIts personas:\n{personas}\n\n"
        "Choose the persona id that best explains why this user visits the next place, and "
        "give a two-sentence reason.\n"
        'Reply as {{"persona_id": "P1", "reason": "..."}}.'
    ),
)
