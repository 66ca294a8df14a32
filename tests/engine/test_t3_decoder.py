"""T3Decoder against chatterbox's own T3 path (CPU, float32, tiny architecture with random weights).

Reference for logits: `T3.prepare_input_embeds` + `T3HuggingfaceBackend` forwards with Hugging Face's cache,
exactly as `T3.inference` runs them, fed the tokens our decoder produced. Reference for tokens: `T3.inference`
itself with `torch.multinomial` replaced by argmax, against our decoder in greedy mode.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from chatterbox.models.t3.inference.t3_hf_backend import T3HuggingfaceBackend
from chatterbox.models.t3.modules.cond_enc import T3Cond

from app.engine.chatterbox.arch import build_t3
from app.engine.chatterbox.t3 import T3Decoder
from app.engine.types import EngineError, GenerationSettings

LOGIT_TOLERANCE = 1e-4  # max abs difference, float32 (observed ~1e-6)
BOS, SOT, EOT = 6561, 255, 0


@pytest.fixture(scope="module")
def t3():
    torch.manual_seed(0)
    return build_t3("tiny").eval()


@pytest.fixture(scope="module")
def cond() -> T3Cond:
    generator = torch.Generator().manual_seed(1)
    return T3Cond(
        speaker_emb=torch.randn(1, 256, generator=generator),
        cond_prompt_speech_tokens=torch.randint(0, 6561, (1, 150), generator=generator),
        emotion_adv=0.5 * torch.ones(1, 1, 1),
    )


def text_ids(length: int, seed: int) -> torch.Tensor:
    return torch.randint(1, 700, (length,), generator=torch.Generator().manual_seed(seed))


def decoder(t3, **kwargs) -> T3Decoder:
    return T3Decoder(t3, **{"max_batch": 4, "max_context": 256, "device": "cpu", **kwargs})


def run_alone(t3, cond, text, settings, steps) -> tuple[list[int], list[torch.Tensor]]:
    """Tokens and raw logits of one stream decoded by itself."""
    dec = decoder(t3)
    dec.add("solo", cond, text, settings)
    tokens, logits = [], []
    for _ in range(steps):
        tokens.append(dec.step(["solo"]).item())
        logits.append(dec.last_logits("solo").clone())
    return tokens, logits


def upstream_logits(t3, cond, text, cfg_weight, tokens) -> list[torch.Tensor]:
    """(2, V) logits (conditional, unconditional) before each of `tokens`, teacher-forced through upstream."""
    text_tokens = F.pad(F.pad(text, (1, 0), value=SOT), (0, 1), value=EOT)[None].repeat(2, 1)
    bos = torch.full((2, 1), BOS)
    with torch.inference_mode():
        embeds, _ = t3.prepare_input_embeds(t3_cond=dataclasses.replace(cond), text_tokens=text_tokens,
                                            speech_tokens=bos, cfg_weight=cfg_weight)
        backend = T3HuggingfaceBackend(config=t3.cfg, llama=t3.tfmr, speech_enc=t3.speech_emb,
                                       speech_head=t3.speech_head)
        step_input = t3.speech_emb(bos[:1]) + t3.speech_pos_emb.get_fixed_embedding(0)
        out = backend(inputs_embeds=torch.cat([embeds, step_input.expand(2, -1, -1)], dim=1),
                      past_key_values=None, use_cache=True, output_attentions=True, output_hidden_states=True,
                      return_dict=True)
        logits = [out.logits[:, -1]]
        for i, token in enumerate(tokens[:-1]):
            step_input = t3.speech_emb(token.view(1, 1)) + t3.speech_pos_emb.get_fixed_embedding(i + 1)
            out = backend(inputs_embeds=step_input.expand(2, -1, -1), past_key_values=out.past_key_values,
                          output_attentions=True, output_hidden_states=True, return_dict=True)
            logits.append(out.logits[:, -1])
    return logits


@pytest.mark.parametrize("cfg_weight", [0.5, 0.0])
def test_logits_match_upstream_at_prefill_and_every_step(t3, cond, cfg_weight):
    text = text_ids(12, seed=2)
    dec = decoder(t3)
    dec.add("a", cond, text, GenerationSettings(cfg_weight=cfg_weight, seed=7))
    tokens, ours = [], []
    for _ in range(20):
        tokens.append(dec.step(["a"]))
        ours.append(dec.last_logits("a").clone())
    reference = upstream_logits(t3, cond, text, cfg_weight, torch.cat(tokens))
    rows = 2 if cfg_weight > 0 else 1  # without CFG upstream's two rows are identical and we compute one
    worst = max((mine - ref[:rows]).abs().max().item() for mine, ref in zip(ours, reference))
    assert worst < LOGIT_TOLERANCE
    assert len(set(torch.cat(tokens).tolist())) > 5  # really sampled, not stuck on one token


@pytest.mark.parametrize("cfg_weight", [0.5, 0.0])
def test_greedy_tokens_match_upstream_inference(t3, cond, cfg_weight, monkeypatch):
    text, steps = text_ids(10, seed=3), 30
    settings = GenerationSettings(cfg_weight=cfg_weight)
    monkeypatch.setattr(torch, "multinomial", lambda probs, num_samples: probs.argmax(-1, keepdim=True))
    text_tokens = F.pad(F.pad(text, (1, 0), value=SOT), (0, 1), value=EOT)[None].repeat(2, 1)
    expected = t3.inference(
        t3_cond=dataclasses.replace(cond), text_tokens=text_tokens, max_new_tokens=steps,
        temperature=settings.temperature, top_p=settings.top_p, min_p=settings.min_p,
        repetition_penalty=settings.repetition_penalty, cfg_weight=cfg_weight,
    )[0]
    dec = decoder(t3, greedy=True)
    dec.add("a", cond, text, settings)
    ours = torch.cat([dec.step(["a"]) for _ in range(len(expected))])
    assert ours.tolist() == expected.tolist()
    assert len(expected) > 10


SETTINGS = {
    "a": (GenerationSettings(cfg_weight=0.5, seed=11), 8),
    "b": (GenerationSettings(cfg_weight=0.0, seed=12, temperature=1.2, top_p=0.9, min_p=0.1,
                             repetition_penalty=1.5), 15),
    "c": (GenerationSettings(cfg_weight=1.0, seed=13, temperature=0.6, repetition_penalty=1.0), 5),
}


@pytest.fixture(scope="module")
def solo(t3, cond):
    return {name: run_alone(t3, cond, text_ids(n, seed=i), settings, steps=12)
            for i, (name, (settings, n)) in enumerate(SETTINGS.items())}


def add_named(dec, cond, name):
    settings, n = SETTINGS[name]
    dec.add(name, cond, text_ids(n, seed=list(SETTINGS).index(name)), settings)


class Recorder:
    """Steps a shared decoder and keeps each stream's tokens and logits."""

    def __init__(self, dec):
        self.dec = dec
        self.tokens = {name: [] for name in SETTINGS}
        self.logits = {name: [] for name in SETTINGS}

    def step(self, names):
        for name, token in zip(names, self.dec.step(names).tolist()):
            self.tokens[name].append(token)
            self.logits[name].append(self.dec.last_logits(name).clone())

    def assert_matches(self, solo):
        # The tiny random model's distributions are flat enough that noise decides most draws, so the
        # logits are compared too: they expose any cross-talk between rows that tokens alone could hide.
        for name, tokens in self.tokens.items():
            solo_tokens, solo_logits = solo[name]
            assert tokens == solo_tokens[:len(tokens)], name
            for mine, alone in zip(self.logits[name], solo_logits):
                assert (mine - alone).abs().max() < 1e-5, name


def test_batched_streams_sample_as_if_alone(t3, cond, solo):
    recorder = Recorder(decoder(t3))
    for name in SETTINGS:
        add_named(recorder.dec, cond, name)
    for _ in range(12):
        recorder.step(["c", "a", "b"])
    recorder.assert_matches(solo)
    assert all(len(tokens) == 12 for tokens in recorder.tokens.values())


def test_streams_joining_leaving_and_pausing_do_not_change_others(t3, cond, solo):
    dec = decoder(t3)
    recorder = Recorder(dec)
    step = recorder.step

    add_named(dec, cond, "a")  # rows 0-1
    for _ in range(3):
        step(["a"])
    add_named(dec, cond, "b")  # row 2
    for _ in range(3):
        step(["b", "a"])
    add_named(dec, cond, "c")  # rows 3-4
    step(["a", "b", "c"])
    step(["c"])  # a and b sit this one out
    dec.remove("a")  # c's rows move down into 0-1
    assert dec.free_rows == dec.max_rows - 3
    for _ in range(4):
        step(["b", "c"])
    recorder.assert_matches(solo)
    assert [len(recorder.tokens[name]) for name in "abc"] == [7, 8, 6]


def test_remove_frees_rows_and_capacity_is_enforced(t3, cond):
    dec = decoder(t3, max_batch=2)
    assert dec.free_rows == dec.max_rows == 4
    dec.add("x", cond, text_ids(5, 0), GenerationSettings(cfg_weight=0.5))
    dec.add("y", cond, text_ids(5, 1), GenerationSettings(cfg_weight=0.5))
    assert dec.free_rows == 0 and dec.active == {"x", "y"}
    with pytest.raises(EngineError) as full:
        dec.add("z", cond, text_ids(5, 2), GenerationSettings(cfg_weight=0.0))
    assert full.value.code == "no_capacity"
    dec.step(["x", "y"])
    dec.remove("x")
    dec.remove("y")
    dec.remove("y")  # idempotent
    assert dec.free_rows == 4 and dec.active == set()
    dec.add("z", cond, text_ids(5, 2), GenerationSettings(cfg_weight=0.0))  # reused rows work
    assert dec.step(["z"]).shape == (1,)


def test_cfg_weight_zero_uses_a_single_row(t3, cond):
    dec = decoder(t3)
    dec.add("plain", cond, text_ids(6, 0), GenerationSettings(cfg_weight=0.0))
    assert dec.free_rows == dec.max_rows - 1
    dec.step(["plain"])
    assert dec.last_logits("plain").shape == (1, t3.hp.speech_tokens_dict_size)
    dec.add("guided", cond, text_ids(6, 0), GenerationSettings(cfg_weight=0.5))
    assert dec.free_rows == dec.max_rows - 3


def test_context_limit_is_an_engine_error(t3, cond):
    dec = decoder(t3, max_context=60)  # prompt: 34 conditioning + 12 text + BOS = 47 positions
    dec.add("a", cond, text_ids(10, 0), GenerationSettings())
    assert dec.tokens_left("a") == 13
    for _ in range(13):
        dec.step(["a"])
    with pytest.raises(EngineError) as full:
        dec.step(["a"])
    assert full.value.code == "context_full"
    with pytest.raises(EngineError) as long_text:
        dec.add("b", cond, text_ids(30, 0), GenerationSettings())
    assert long_text.value.code == "text_too_long"


def test_status_on_cpu_reports_eager_without_graphs(t3):
    dec = decoder(t3)
    status = dec.warmup()
    assert status["device"] == "cpu" and status["dtype"] == "float32"
    assert status["captured_buckets"] == [] and status["fallback_reason"] is None


# ------------------------------------------------------------------------------------------------- CUDA

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.slow
def test_torch_compiled_decode_samples_the_same_tokens_as_eager(t3, cond):
    """inductor's fused kernels (C++ on the CPU here) sample what eager samples, with CFG and CFG-less rows and a
    stream that sits out some steps (about a minute of compiling)."""
    def tokens(compile_mode):
        dec = decoder(t3, compile_mode=compile_mode)
        dec.add("a", cond, text_ids(20, seed=3), GenerationSettings(cfg_weight=0.5, seed=3))
        dec.add("b", cond, text_ids(9, seed=4), GenerationSettings(cfg_weight=0.0, seed=4))
        steps = [dec.step(["a", "b"] if i % 3 else ["a"]).tolist() for i in range(12)]
        assert dec.status()["fallback_reason"] is None
        return steps

    assert tokens("default") == tokens(None)


def fresh_tiny_t3():
    torch.manual_seed(0)
    return build_t3("tiny").eval()


@pytest.mark.gpu
@needs_cuda
def test_cuda_graphs_replay_exactly_what_eager_computes(cond):
    eager = T3Decoder(fresh_tiny_t3(), max_batch=4, max_context=300, device="cuda", enable_cuda_graphs=False)
    graphed = T3Decoder(fresh_tiny_t3(), max_batch=4, max_context=300, device="cuda")
    status = graphed.warmup()
    assert status["fallback_reason"] is None, status
    assert len(status["captured_buckets"]) == len(status["row_buckets"]) * len(status["context_buckets"])
    assert status["dtype"] == "bfloat16"
    recorders = [Recorder(eager), Recorder(graphed)]
    schedule = [("add", "a"), ("step", "a"), ("add", "b"), ("step", "ab"), ("add", "c"), ("step", "cab"),
                ("step", "b"), ("remove", "a"), ("step", "bc"), ("step", "cb")]
    for action, names in schedule:
        for recorder in recorders:
            if action == "add":
                add_named(recorder.dec, cond, names)
            elif action == "remove":
                recorder.dec.remove(names)
            else:
                for _ in range(20):  # long enough to cross from the 128- to the 256-position window
                    recorder.step(list(names))
    assert recorders[0].tokens == recorders[1].tokens
    for name in SETTINGS:
        for mine, theirs in zip(recorders[1].logits[name], recorders[0].logits[name]):
            assert (mine - theirs).abs().max() < 2e-2  # same kernels: bitwise equal in practice


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, needs_cuda])])
def test_bf16_logits_track_float32_upstream(cond, device):
    """bf16 weights, KV cache, rotation matrices and norms (CUDA: under graphs) stay close to float32 upstream."""
    reference_t3 = fresh_tiny_t3()
    dec = T3Decoder(fresh_tiny_t3(), max_batch=2, max_context=300, device=device, dtype=torch.bfloat16)
    dec.warmup()
    text = text_ids(12, seed=2)
    dec.add("a", cond, text, GenerationSettings(seed=7))
    tokens, ours = [], []
    for _ in range(20):
        tokens.append(dec.step(["a"]).cpu())
        ours.append(dec.last_logits("a").cpu())
    reference = upstream_logits(reference_t3, cond, text, 0.5, torch.cat(tokens))
    scale = max(ref.abs().max().item() for ref in reference)
    worst = max((mine - ref).abs().max().item() for mine, ref in zip(ours, reference))
    print(f"bf16 {device} vs float32 upstream: max abs logit diff {worst:.4f} (logit scale {scale:.2f})")
    assert worst < 0.05 * scale
