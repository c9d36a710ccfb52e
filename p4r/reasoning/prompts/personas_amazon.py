"""Personas of a product from its reviews' aspects."""

from p4r.reasoning.prompts import Prompt

PROMPT = Prompt(
    version="personas-amazon-1",
    system=(
        "You build personas for a recommender system: each persona is one kind of buyer who "
        "chooses this product, and why. Ground every persona in concrete aspects from the "
        "reviews (features, price, purpose, use). Keep critical and minority views as "
        "personas of their own. Never write two personas that say the same thing. Answer "
        "with a JSON object only."
    ),
    user=(
        "Product: {summary}\n\nWhat {n_reviews} review(s) reveal:\n{evidence}\n\n"
        "Write {count_rule}. Each persona has a name of 2 to 3 words, a one-sentence "
        "description of who they are, and a rationale that cites the concrete aspects that "
        "draw them to it.\n"
        'Reply as {{"personas": [{{"name": "...", "description": "...", "rationale": "..."}}]}}.'
    ),
)
