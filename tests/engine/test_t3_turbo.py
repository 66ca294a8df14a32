"""TurboT3Decoder against upstream's Turbo T3 path on the tiny synthetic Turbo checkpoint (CPU, float32).

Reference for logits: the GPT2Model forwards of `T3.inference_turbo` (prompt cond + text + BOS, then one speech
embedding per step through Hugging Face's cache), fed the tokens our decoder produced. Reference for tokens:
`T3.inference_turbo` itself with `torch.multinomial` replaced by argmax, against our decoder in greedy mode.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from app.engine.chatterbox.arch import build_t3
from app.engine.chatterbox.t3 import T3Decoder
from app.engine.chatterbox.t3_turbo import TurboT3Decoder
from app.engine.types import EngineError, GenerationSettings

LOGIT_TOLERANCE = 1e-4  # max abs difference, float32
BOS, EOS = 6561, 6562
TEXT = "Hello there, thanks for calling. Let me check that for you."


@pytest.fixture(scope="module")
def t3(tiny_turbo_models):
    return tiny_turbo_models.t3


@pytest.fixture(scope="module")
def cond(tiny_turbo_models):
    return tiny_turbo_models.conds.t3


@pytest.fixture(scope="module")
def tokenize(tiny_turbo_models):
    return lambda text: tiny_turbo_models.tokenizer.text_to_tokens(text)[0]


def decoder(t3, **kwargs) -> TurboT3Decoder:
    return TurboT3Decoder(t3, **{"max_batch": 4, "max_context": 600, "device": "cpu", **kwargs})


def decode(dec: TurboT3Decoder, name: str, steps: int) -> tuple[list[int], list[torch.Tensor]]:
    tokens, logits = [], []
    for _ in range(steps):
        tokens.append(dec.step([name]).item())
        logits.append(dec.last_logits(name).clone())
    return tokens, logits


def upstream_logits(t3, cond, text: torch.Tensor, tokens: list[int]) -> list[torch.Tensor]:
    """(1, V) logits before each of `tokens`, teacher-forced through the forwards `T3.inference_turbo` runs."""
    with torch.inference_mode():
        bos = torch.full((1, 1), BOS)
        embeds, _ = t3.prepare_input_embeds(t3_cond=dataclasses.replace(cond), text_tokens=text[None],
                                            speech_tokens=bos, cfg_weight=0.0)
        out = t3.tfmr(inputs_embeds=embeds, use_cache=True)
        logits = [t3.speech_head(out[0][:, -1])]
        for token in tokens[:-1]:
            out = t3.tfmr(inputs_embeds=t3.speech_emb(torch.tensor([[token]])), past_key_values=out.past_key_values,
                          use_cache=True)
            logits.append(t3.speech_head(out[0][:, -1]))
    return logits


def worst_difference(ours: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    return max((mine - ref).abs().max().item() for mine, ref in zip(ours, reference, strict=True))


def test_logits_match_upstream_at_prefill_and_every_step(t3, cond, tokenize):
    text = tokenize(TEXT)
    dec = decoder(t3)
    dec.add("a", cond, text, GenerationSettings(seed=7, top_p=0.95))
    tokens, ours = decode(dec, "a", 20)
    worst = worst_difference(ours, upstream_logits(t3, cond, text, tokens))
    assert worst < LOGIT_TOLERANCE
    assert len(set(tokens)) > 5  # really sampled, not stuck on one token


def test_a_wrong_position_offset_breaks_the_logit_match(t3, cond, tokenize):
    """Negative control: GPT-2 positions one off (as if the BOS were prefilled and fed again) are far outside the
    tolerance, so the match above does check the positions."""
    text = tokenize(TEXT)
    dec = decoder(t3)
    wpe = dec._wpe
    dec._wpe = lambda positions: wpe(positions + 1)
    dec.add("a", cond, text, GenerationSettings(seed=7))
    tokens, ours = decode(dec, "a", 5)
    assert worst_difference(ours, upstream_logits(t3, cond, text, tokens)) > 100 * LOGIT_TOLERANCE


def greedy_upstream(t3, cond, text, settings: GenerationSettings, top_k: int, steps: int, monkeypatch) -> list[int]:
    monkeypatch.setattr(torch, "multinomial", lambda probs, num_samples: probs.argmax(-1, keepdim=True))
    return t3.inference_turbo(t3_cond=dataclasses.replace(cond), text_tokens=text[None],
                              temperature=settings.temperature, top_k=top_k, top_p=settings.top_p,
                              repetition_penalty=settings.repetition_penalty, max_gen_len=steps)[0].tolist()


def greedy_ours(t3, cond, text, settings: GenerationSettings, top_k: int, steps: int) -> list[int]:
    """`steps` + 1 tokens (upstream samples one from the prompt, then up to `steps`), cut after a stop as upstream
    cuts (its result drops the stop token)."""
    dec = decoder(t3, greedy=True, top_k=top_k)
    dec.add("a", cond, text, settings)
    tokens, _ = decode(dec, "a", steps + 1)
    return tokens[:tokens.index(EOS)] if EOS in tokens else tokens


@pytest.mark.parametrize("settings", [GenerationSettings(top_p=0.95), GenerationSettings(temperature=1.3,
                                                                                         repetition_penalty=2.0)])
def test_greedy_tokens_match_upstream_inference_turbo(t3, cond, tokenize, settings, monkeypatch):
    text, steps = tokenize(TEXT), 30
    expected = greedy_upstream(t3, cond, text, settings, 1000, steps, monkeypatch)
    assert greedy_ours(t3, cond, text, settings, 1000, steps) == expected
    assert len(expected) > 10


def test_repetition_history_is_bos_for_the_first_token_then_generated_tokens_only(t3, cond, tokenize, monkeypatch):
    """A speech head that always prefers BOS, then A, then B, by margins the 1.2 penalty reorders: upstream
    penalises BOS for the first token only, so A comes first and BOS second; had we kept BOS in the history,
    the second token would be B."""
    a, b = 100, 200
    head_t3 = copy.deepcopy(t3)
    head_t3.speech_head.weight.data.zero_()
    head_t3.speech_head.bias.data.fill_(-10.0)
    head_t3.speech_head.bias.data[[BOS, a, b]] = torch.tensor([2.0, 1.9, 1.75])
    settings, text, steps = GenerationSettings(repetition_penalty=1.2), tokenize(TEXT), 5
    expected = greedy_upstream(head_t3, cond, text, settings, 1000, steps, monkeypatch)
    assert expected[:3] == [a, BOS, b]
    assert greedy_ours(head_t3, cond, text, settings, 1000, steps) == expected


def test_top_k_is_applied_per_row_on_the_device(t3, cond, tokenize):
    """Sampling with top_k=1 leaves one candidate, so it decodes exactly the greedy tokens; with upstream's 1000
    the same seed draws other tokens (the control)."""
    text, settings = tokenize(TEXT), GenerationSettings(seed=3, temperature=1.5)
    greedy = greedy_ours(t3, cond, text, settings, 1000, 15)

    def sampled(top_k: int) -> list[int]:
        dec = decoder(t3, top_k=top_k)
        dec.add("a", cond, text, settings)
        return decode(dec, "a", len(greedy))[0]

    assert sampled(1) == greedy
    assert sampled(1000) != greedy


SETTINGS = {
    "a": (GenerationSettings(seed=11, top_p=0.95), "Hello there."),
    "b": (GenerationSettings(seed=12, temperature=1.2, top_p=0.9, repetition_penalty=1.5),
          "Your appointment is on Monday at three o'clock in the afternoon."),
    "c": (GenerationSettings(seed=13, temperature=0.6, repetition_penalty=1.0, cfg_weight=0.0), "Thanks!"),
}


@pytest.fixture(scope="module")
def solo(t3, cond, tokenize):
    """Each stream's tokens and logits decoded alone."""
    runs = {}
    for name, (settings, text) in SETTINGS.items():
        dec = decoder(t3)
        dec.add(name, cond, tokenize(text), settings)
        runs[name] = decode(dec, name, 12)
    return runs


class Recorder:
    """Steps a shared decoder and keeps each stream's tokens and logits."""

    def __init__(self, dec: TurboT3Decoder, tokenize):
        self.dec = dec
        self.tokenize = tokenize
        self.tokens: dict[str, list[int]] = {name: [] for name in SETTINGS}
        self.logits: dict[str, list[torch.Tensor]] = {name: [] for name in SETTINGS}

    def add(self, cond, name: str) -> None:
        settings, text = SETTINGS[name]
        self.dec.add(name, cond, self.tokenize(text), settings)

    def step(self, names: list[str]) -> None:
        for name, token in zip(names, self.dec.step(names).tolist(), strict=True):
            self.tokens[name].append(token)
            self.logits[name].append(self.dec.last_logits(name).clone())

    def assert_matches(self, solo) -> None:
        # Logits too: they expose cross-talk between rows that the tiny model's flat distributions could hide.
        for name, tokens in self.tokens.items():
            solo_tokens, solo_logits = solo[name]
            assert tokens == solo_tokens[:len(tokens)], name
            for mine, alone in zip(self.logits[name], solo_logits):
                assert (mine - alone).abs().max() < 1e-5, name


def test_batched_streams_sample_as_if_alone(t3, cond, tokenize, solo):
    recorder = Recorder(decoder(t3), tokenize)
    for name in SETTINGS:
        recorder.add(cond, name)
    for _ in range(12):
        recorder.step(["c", "a", "b"])
    recorder.assert_matches(solo)
    assert all(len(tokens) == 12 for tokens in recorder.tokens.values())


def test_streams_joining_leaving_and_pausing_do_not_change_others(t3, cond, tokenize, solo):
    dec = decoder(t3)
    recorder = Recorder(dec, tokenize)
    recorder.add(cond, "a")  # row 0
    for _ in range(3):
        recorder.step(["a"])
    recorder.add(cond, "b")  # row 1
    for _ in range(3):
        recorder.step(["b", "a"])
    recorder.add(cond, "c")  # row 2
    recorder.step(["a", "b", "c"])
    recorder.step(["c"])  # a and b sit this one out
    dec.remove("a")  # c moves down into row 0
    assert dec.free_rows == dec.max_rows - 2
    for _ in range(4):
        recorder.step(["b", "c"])
    recorder.assert_matches(solo)
    assert [len(recorder.tokens[name]) for name in "abc"] == [7, 8, 6]


def test_one_row_per_stream_and_capacity_is_enforced(t3, cond, tokenize):
    dec = decoder(t3, max_batch=2)
    assert dec.free_rows == dec.max_rows == 2
    dec.add("x", cond, tokenize("one"), GenerationSettings(cfg_weight=0.5))  # Turbo has no CFG row
    dec.add("y", cond, tokenize("two"), GenerationSettings())
    assert dec.free_rows == 0 and dec.active == {"x", "y"}
    assert dec.step(["x"]).shape == (1,)
    with pytest.raises(EngineError) as full:
        dec.add("z", cond, tokenize("three"), GenerationSettings())
    assert full.value.code == "no_capacity"
    dec.remove("x")
    dec.remove("x")  # idempotent
    dec.add("z", cond, tokenize("three"), GenerationSettings())  # the freed row works
    assert dec.step(["z", "y"]).shape == (2,)
    assert dec.last_logits("z").shape == (1, t3.hp.speech_tokens_dict_size)
    assert torch.equal(dec.spoken_text_positions(["z", "y"]), torch.tensor([-1, -1]))


def test_context_limit_is_an_engine_error(t3, cond, tokenize):
    text = tokenize("Hello there.")
    prompt = cond.cond_prompt_speech_tokens.shape[1] + 1 + len(text)  # speaker embedding, prompt speech, text
    dec = decoder(t3, max_context=prompt + 5)
    dec.add("a", cond, text, GenerationSettings())
    assert dec.tokens_left("a") == 5  # the BOS step writes position `prompt`, and yields the first token
    for _ in range(5):
        dec.step(["a"])
    with pytest.raises(EngineError) as full:
        dec.step(["a"])
    assert full.value.code == "context_full"
    with pytest.raises(EngineError) as long_text:
        dec.add("b", cond, tokenize(TEXT), GenerationSettings())
    assert long_text.value.code == "text_too_long"


def test_each_decoder_refuses_the_other_backbone(t3):
    with pytest.raises(ValueError, match="Llama"):
        T3Decoder(t3, device="cpu")
    with pytest.raises(ValueError, match="GPT-2"):
        TurboT3Decoder(build_t3("tiny", "standard"), device="cpu")
    with pytest.raises(ValueError, match="learned positions"):
        decoder(t3, max_context=t3.cfg.n_positions + 1)


def test_status_on_cpu_reports_eager_without_graphs(t3):
    status = decoder(t3).warmup()
    assert status["backbone"] == "gpt2" and status["device"] == "cpu" and status["dtype"] == "float32"
    assert status["captured_buckets"] == [] and status["fallback_reason"] is None
    assert status["top_k"] == 1000 and status["max_rows"] == 4


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA")])])
def test_bf16_logits_track_float32_upstream(t3, cond, tokenize, device):
    """bf16 weights and KV cache (CUDA: under CUDA graphs) stay close to float32 upstream."""
    text = tokenize(TEXT)
    dec = decoder(copy.deepcopy(t3), device=device, dtype=torch.bfloat16)
    dec.warmup()
    dec.add("a", cond, text, GenerationSettings(seed=7))
    tokens, ours = decode(dec, "a", 20)
    reference = upstream_logits(t3, cond, text, tokens)
    scale = max(ref.abs().max().item() for ref in reference)
    assert worst_difference([o.cpu() for o in ours], reference) < 0.05 * scale


@pytest.mark.slow
def test_torch_compiled_decode_samples_the_same_tokens_as_eager(t3, cond, tokenize):
    """inductor's fused kernels (C++ on the CPU here) sample what eager samples, with a stream that sits out some
    steps (about a minute of compiling)."""
    def tokens(compile_mode):
        dec = decoder(t3, compile_mode=compile_mode)
        dec.add("a", cond, tokenize(TEXT), GenerationSettings(seed=3))
        dec.add("b", cond, tokenize("Hello there."), GenerationSettings(seed=4, temperature=1.2))
        steps = [dec.step(["a", "b"] if i % 3 else ["a"]).tolist() for i in range(12)]
        assert dec.status()["fallback_reason"] is None
        return steps

    assert tokens("default") == tokens(None)
