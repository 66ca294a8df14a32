"""What a simulated LLM says and how fast: a pool of assistant replies, BPE-like tokens, jittered timing."""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

REPLY_POOL: tuple[str, ...] = (
    "Sure! The quickest way to get there is to take the northbound line two stops to Central, then walk "
    "about five minutes east along the river. If it's raining, there's a covered walkway through the "
    "shopping arcade that comes out right across from the entrance.",
    "Good question. A heat pump doesn't create heat; it moves it. In winter it pulls warmth out of the outside "
    "air, even when it feels cold to us, and concentrates it indoors. That's why it can deliver three or four "
    "units of heat for every unit of electricity it uses.",
    "I've moved your appointment to Thursday at half past two. You'll get a confirmation by text in a few "
    "minutes. Is there anything else you'd like me to change, like the reminder time or the contact number "
    "on file?",
    "Here's a simple plan for the week. Start with three short runs of about twenty minutes at an easy pace, "
    "with a rest day in between. On the weekend, add one longer walk. The goal right now isn't speed, it's "
    "building the habit without getting injured.",
    "Unfortunately that flight is fully booked, but there are two good alternatives. One leaves forty minutes "
    "earlier from the same terminal, and the other connects through Frankfurt and arrives about an hour later. "
    "Would you like me to hold a seat on either of them?",
    "To reset the router, find the small pinhole on the back labeled reset. Press it with a paper clip and hold "
    "it for about ten seconds, until the lights start blinking. Then give it two or three minutes to restart "
    "before you try connecting again.",
    "That's a really common worry, and you're not alone in it. It might help to write down the three things "
    "that feel most urgent, and pick just one to start with today. Small, finished steps tend to make the rest "
    "feel a lot more manageable.",
    "The short answer is yes, but with a caveat. The warranty covers the replacement part and the labor, as long "
    "as the repair is done by an authorized service center. If you've had it fixed somewhere else before, "
    "they may ask for the receipt.",
    "Okay, let's break the recipe down. Whisk the eggs and sugar until pale, fold in the flour gently so you "
    "don't knock the air out, and bake at a moderate heat for about twenty-five minutes. It's done when a "
    "skewer comes out clean.",
    "Your order shipped this morning and is on its way. The tracking page says it should arrive by Friday "
    "afternoon. If nobody's home, the courier will leave a card, and you can pick it up from the local depot "
    "the next day.",
)

# A word with its leading space, a run of punctuation, or whitespace: roughly how BPE tokenizers cut English.
_PIECE = re.compile(r" ?[A-Za-z']+| ?\d+| ?[^\sA-Za-z'\d]+|\s+")
MAX_TOKEN_CHARS = 7


def tokenize(text: str) -> list[str]:
    """Split text into LLM-like tokens of about four characters that join back to the exact text."""
    tokens: list[str] = []
    for piece in _PIECE.findall(text):
        while len(piece) > MAX_TOKEN_CHARS:
            tokens.append(piece[:4])
            piece = piece[4:]
        tokens.append(piece)
    return tokens


def truncate_at_word(text: str, max_chars: int) -> str:
    """Cut to at most `max_chars`, at a word boundary, keeping at least one word (0 keeps everything)."""
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    cut = text.rfind(" ", 0, max_chars + 1)
    return text[: cut if cut > 0 else max_chars].rstrip(" ,;:") + "."


@dataclass(frozen=True)
class TokenTiming:
    """Inter-token gaps of a streaming LLM: gamma-distributed around 1/rate, with occasional stalls."""

    tokens_per_s: float = 30.0
    gamma_shape: float = 2.0  # 2 gives a coefficient of variation of about 0.7: bursty but not wild
    stall_probability: float = 0.02
    stall_mean_s: float = 0.3

    def next_gap(self, rng: random.Random) -> float:
        mean = 1.0 / self.tokens_per_s
        gap = rng.gammavariate(self.gamma_shape, mean / self.gamma_shape)
        if rng.random() < self.stall_probability:
            # Lognormal with the requested mean: a tool call, a long sampling step, a network hiccup.
            sigma = 0.5
            gap += rng.lognormvariate(_lognormal_mu(self.stall_mean_s, sigma), sigma)
        return gap


def _lognormal_mu(mean: float, sigma: float) -> float:
    return math.log(mean) - sigma * sigma / 2
