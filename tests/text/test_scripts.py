"""The chunker per script: each family's sentence and clause marks are cut points (CJK 。！？，、, Devanagari ।,
Arabic ؟ ،, Greek ";" as a question mark), scripts without spaces are budgeted by characters per token, and
whatever the token split or the LLM's rate, chunks end only at a mark or a space and rejoin to the caller's text."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.text.chunker import AdaptiveChunker, ChunkerConfig, TextChunk
from app.text.normalize import SPACELESS_MARKS

SAMPLES = {
    "fr": "Bonjour, je m'appelle Marie. Le rendez-vous est à 15 h 30, n'est-ce pas ? Oui, c'est bien ça.",
    "ru": "Привет, как дела? У меня всё хорошо, спасибо. Встреча в 15:30, не опаздывай.",
    "el": "Γεια σου, τι κάνεις; Είμαι καλά, ευχαριστώ. Θα τα πούμε αύριο στις 10.",
    "ar": "مرحبا، كيف حالك؟ أنا بخير، شكرا. سنلتقي غدا في الساعة العاشرة.",
    "he": "שלום, מה שלומך? אני בסדר, תודה. נתראה מחר בשעה עשר.",
    "hi": "नमस्ते, आप कैसे हैं? मैं ठीक हूँ, धन्यवाद। कल दस बजे मिलते हैं।",
    "zh": "你好，今天天气很好。我们下午三点去公园散步吧！你觉得怎么样？我觉得很好，谢谢。",
    "ja": "こんにちは、お元気ですか？今日はとても良い天気ですね。明日の十時に会いましょう。",
    "ko": "안녕하세요, 잘 지내세요? 저는 잘 지내요. 내일 열 시에 만나요.",
}
ENDINGS = ".!?,;" + SPACELESS_MARKS


def feed(text: str, cuts: list[int], rate: float, language: str) -> list[TextChunk]:
    bounds = sorted({0, len(text), *(c % len(text) for c in cuts)})
    chunker = AdaptiveChunker(ChunkerConfig().for_language(language))
    chunks: list[TextChunk] = []
    now = 0.0
    for a, b in zip(bounds, bounds[1:]):
        chunks += chunker.push(text[a:b], now)
        now += 1 / rate
        while (deadline := chunker.next_deadline()) is not None and deadline < now:
            chunks += chunker.poll(deadline)
    return chunks + chunker.poll(now + 10) + chunker.end()


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(SAMPLES)), st.lists(st.integers(min_value=1, max_value=500), max_size=40),
       st.floats(2.0, 100.0))
def test_chunks_end_at_marks_or_spaces_and_rejoin(language: str, cuts: list[int], rate: float) -> None:
    text = SAMPLES[language]
    chunks = feed(text, cuts, rate, language)
    assert "".join(chunk.source for chunk in chunks) == text
    for chunk, after in zip(chunks, chunks[1:]):
        assert chunk.text.rstrip("\"')")[-1:] in ENDINGS or after.source[:1].isspace(), \
            f"{language}: cut inside a word: {[c.source for c in chunks]}"


@pytest.mark.parametrize("language", ["zh", "ja"])
def test_text_without_spaces_is_cut_at_its_marks(language: str) -> None:
    chunks = feed(SAMPLES[language], [], 100.0, language)
    assert len(chunks) >= 3
    assert all(chunk.text[-1] in SPACELESS_MARKS for chunk in chunks)
    assert "".join(chunk.text for chunk in chunks) == SAMPLES[language]  # no space was added


def test_scripts_without_spaces_are_budgeted_per_token_not_per_four_characters() -> None:
    zh = ChunkerConfig().for_language("zh")
    assert zh.max_chars == ChunkerConfig().chunk_size  # a token a character
    long = "我" * 400 + "。"
    chunks = feed(long, [], 100.0, "zh")
    assert max(len(chunk.text) for chunk in chunks) <= zh.max_chars + zh.max_word_chars
    control = AdaptiveChunker(ChunkerConfig())  # English budgets: four times longer chunks
    english_budget = control.push(long, 0.0) + control.end()
    assert max(len(c.text) for c in english_budget) > max(len(c.text) for c in chunks)


def test_greek_question_mark_is_a_question() -> None:
    chunker = AdaptiveChunker(ChunkerConfig().for_language("el"))
    chunks = chunker.push("Τι κάνεις; Είμαι καλά, ευχαριστώ πολύ. ", 0.0) + chunker.end()
    assert chunks[0].speak_text.startswith("Τι κάνεις?")
    english = AdaptiveChunker(ChunkerConfig())  # elsewhere ";" is a pause
    assert "?" not in "".join(c.speak_text for c in english.push("Why; because. ", 1.0) + english.end())
