"""Session state operations on the golden tiny checkpoint: fork, truncate, save/load and seeded
generation. Logits after each operation are compared with a fresh full prefill (fp32, quant_sim
off: <= 1e-4); save/load must be bit-exact in every numeric mode.

The checkpoint has a 16-token window and ratio-4 (CSA) and ratio-128 (HCA) layers, so the cut
points below fall inside a window, on a ratio-4 boundary, on the ratio-128 boundary (also a
ratio-4 one) and just after each.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dsv4.engine import load_model
from dsv4.engine.session import Session
from dsv4.engine.session_file import SessionFileError, load_session, token_prefix_hash
from dsv4.engine.snapshots import SnapshotLog, SnapshotPolicy

GOLDEN = Path(__file__).resolve().parent.parent / "data" / "golden" / "checkpoint"
N = 260  # tokens of the reference prefill
HELD = 200  # tokens the session holds before it is cut back
TOL = 1e-4


@pytest.fixture(scope="module")
def reference(exact_model, golden_tokens) -> torch.Tensor:
    return exact_model.new_session().prefill(golden_tokens[:N])


def session_with(model, interval: int) -> Session:
    """A session that snapshots every `interval` tokens (and at each prefill's end)."""
    return Session(model, snapshots=SnapshotLog(SnapshotPolicy(interval=interval)))


@pytest.fixture(scope="module")
def held(exact_model, golden_tokens):
    """interval -> a session holding the first HELD tokens (tests cut back forks of it)."""
    sessions: dict[int, Session] = {}

    def get(interval: int) -> Session:
        if interval not in sessions:
            sessions[interval] = session_with(exact_model, interval)
            sessions[interval].prefill(golden_tokens[:HELD])
        return sessions[interval].fork()

    return get


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


# -- fork ------------------------------------------------------------------------------------
def test_fork_then_continue_matches_full_prefill(exact_model, golden_tokens, reference):
    base = exact_model.new_session()
    head = base.prefill(golden_tokens[:150])
    twin = base.fork()
    base.prefill(golden_tokens[300:320])  # a different continuation must not leak into the fork
    tail = twin.prefill(golden_tokens[150:N])
    assert twin.tokens == golden_tokens[:N] and base.tokens[150:] == golden_tokens[300:320]
    assert max_diff(torch.cat([head, tail]), reference) <= TOL


# -- truncate --------------------------------------------------------------------------------
@pytest.mark.parametrize("cut", [37, 100, 101, 128, 129, 190])
@pytest.mark.parametrize("interval", [64, 4096])
def test_truncate_then_reprefill_matches_full_prefill(
    held, golden_tokens, reference, cut, interval
):
    session = held(interval)
    replayed = session.truncate(cut)
    assert session.pos == cut and session.tokens == golden_tokens[:cut]
    # The gap from the latest snapshot at or before the cut (periodic ones, or none) is replayed.
    last_snapshot = cut // interval * interval
    assert replayed == cut - last_snapshot
    tail = session.prefill(golden_tokens[cut:N])
    assert max_diff(tail, reference[cut:]) <= TOL


def test_truncate_inside_decoded_tokens(exact_model, golden_tokens, reference):
    session = exact_model.new_session()
    session.prefill(golden_tokens[:140])
    for t in golden_tokens[140:170]:
        session.decode(t)
    assert session.truncate(155) == 15  # last snapshot: the end of the prefill at 140
    tail = torch.stack([session.decode(t) for t in golden_tokens[155:165]])
    assert max_diff(tail, reference[155:165]) <= TOL


@pytest.mark.parametrize("cut", [128, 192])
def test_truncate_to_a_snapshot_is_exact_and_replays_nothing(exact_model, held, golden_tokens, cut):
    """At a snapshot the state is restored bit for bit: continuing gives the very logits of
    a session that never went past the cut (same chunking)."""
    straight = session_with(exact_model, 64)
    straight.prefill(golden_tokens[:cut])
    expected = straight.prefill(golden_tokens[cut:N])

    session = held(64)
    for t in golden_tokens[HELD : HELD + 5]:
        session.decode(t)
    assert session.truncate(cut) == 0
    assert torch.equal(session.prefill(golden_tokens[cut:N]), expected)


def test_truncate_twice_and_to_zero(held, golden_tokens, reference):
    session = held(64)
    session.truncate(150)
    session.truncate(70)
    assert max_diff(session.prefill(golden_tokens[70:N]), reference[70:]) <= TOL
    session.truncate(0)
    assert session.pos == 0 and session.tokens == [] and len(session.snapshots) == 0
    assert max_diff(session.prefill(golden_tokens[:N]), reference) <= TOL


def test_truncate_keeps_the_original_of_a_fork(held, golden_tokens, reference):
    original = held(64)
    original.fork().truncate(90)
    assert max_diff(original.prefill(golden_tokens[HELD:N]), reference[HELD:]) <= TOL


def test_truncate_rejects_bad_positions(exact_model, golden_tokens):
    session = exact_model.new_session()
    session.prefill(golden_tokens[:10])
    with pytest.raises(ValueError, match=r"truncate\(11\): expected 0 <= n <= 10"):
        session.truncate(11)
    with pytest.raises(ValueError, match="expected 0 <= n"):
        session.truncate(-1)
    assert session.truncate(10) == 0 and session.pos == 10


def test_truncate_needs_the_token_ids(exact_model, golden_tokens):
    donor = exact_model.new_session()
    donor.prefill(golden_tokens[:20])
    bare = Session(exact_model, donor.state.fork())  # state without its token ids
    with pytest.raises(ValueError, match="knows 0 token ids"):
        bare.truncate(5)


def test_snapshot_log_stays_bounded(exact_model, golden_tokens):
    policy = SnapshotPolicy(interval=16, max_snapshots=4)
    session = Session(exact_model, snapshots=SnapshotLog(policy))
    session.prefill(golden_tokens[:160])
    positions = session.snapshots.positions
    assert len(positions) == 4 and positions[-1] == 160 and positions == sorted(positions)


# -- save / load -----------------------------------------------------------------------------
MODES = {
    "nosim": (torch.float32, False),
    "bf16": (torch.bfloat16, True),
    "fp32": (torch.float32, True),
}


@pytest.mark.parametrize("mode", MODES)
def test_save_load_is_bit_exact(mode, golden_tokens, tmp_path):
    dtype, sim = MODES[mode]
    model = load_model(GOLDEN, dtype=dtype, quant_sim=sim)
    session = session_with(model, 64)
    session.prefill(golden_tokens[:150])  # crosses the ratio-128 boundary; snapshots at 64, 128
    session.decode(golden_tokens[150])
    path = tmp_path / "session.safetensors"
    session.save(path)

    loaded = load_session(model, path, session.policy)
    assert loaded.tokens == session.tokens and loaded.pos == session.pos
    assert loaded.snapshots.positions == session.snapshots.positions

    def continue_and_rewind(s: Session) -> list[torch.Tensor]:
        out = [s.prefill(golden_tokens[151:170]), s.decode(golden_tokens[170])]
        s.truncate(100)  # restores the snapshot at 64 (saved too), replays 36 tokens
        return [*out, s.prefill(golden_tokens[100:110])]

    for a, b in zip(continue_and_rewind(session), continue_and_rewind(loaded), strict=True):
        assert torch.equal(a, b)


def test_load_replaces_the_state_of_a_session(exact_model, golden_tokens, reference, tmp_path):
    saver = exact_model.new_session()
    saver.prefill(golden_tokens[:130])
    saver.save(tmp_path / "s.safetensors")
    session = exact_model.new_session()
    session.prefill(golden_tokens[300:310])
    session.load(tmp_path / "s.safetensors")
    assert session.pos == 130
    assert max_diff(session.prefill(golden_tokens[130:N]), reference[130:]) <= TOL


def test_header_names_model_numerics_and_prefix(exact_model, golden_tokens, tmp_path):
    from safetensors import safe_open

    session = exact_model.new_session()
    session.prefill(golden_tokens[:20])
    session.save(tmp_path / "s.safetensors")
    with safe_open(str(tmp_path / "s.safetensors"), "pt") as f:
        header = f.metadata()
    assert header["fingerprint"] == exact_model.args.fingerprint()
    assert header["tokens_sha256"] == token_prefix_hash(golden_tokens[:20])
    assert (header["pos"], header["dtype"], header["quant_sim"]) == ("20", "float32", "false")


def _tampered(tmp_path: Path, model, tokens: list[int], **changes: str) -> Path:
    """A saved session whose header fields were replaced by `changes`."""
    from safetensors import safe_open

    session = model.new_session()
    session.prefill(tokens)
    path = tmp_path / "s.safetensors"
    session.save(path)
    with safe_open(str(path), "pt") as f:
        header = f.metadata()
    out = tmp_path / "tampered.safetensors"
    save_file(load_file(str(path)), str(out), metadata={**header, **changes})
    return out


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"fingerprint": "0123456789abcdef"}, "fingerprint='0123456789abcdef'"),
        ({"dtype": "bfloat16"}, "dtype='bfloat16', but the model has dtype='float32'"),
        ({"quant_sim": "true"}, "quant_sim='true', but the model has quant_sim='false'"),
        ({"tokens_sha256": "00"}, "token ids do not match the header"),
        ({"format": "other"}, "not a dsv4 session file"),
        ({"layout": json.dumps({"layers": [], "mtp": [], "snapshots": []})}, "layers saved"),
    ],
)
def test_load_rejects_foreign_files(exact_model, golden_tokens, tmp_path, changes, message):
    path = _tampered(tmp_path, exact_model, golden_tokens[:12], **changes)
    with pytest.raises(SessionFileError, match="tampered.safetensors") as err:
        load_session(exact_model, path)
    assert message in str(err.value)


def test_load_reports_missing_and_unreadable_files(exact_model, tmp_path):
    with pytest.raises(SessionFileError, match="no such session file"):
        load_session(exact_model, tmp_path / "absent.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(SessionFileError, match="not a readable safetensors file"):
        load_session(exact_model, tmp_path / "junk.safetensors")


# -- seeded generation ---------------------------------------------------------------------------
def test_seeded_generation_is_reproducible(exact_model, golden_tokens):
    from dsv4.engine.generate import generate
    from dsv4.engine.sampler import SamplingParams
    from dsv4.engine.tokenizer import get_tokenizer

    tokenizer = get_tokenizer()

    def run(seed: int) -> list[int]:
        params = SamplingParams(temperature=1.0, top_p=0.95, seed=seed, max_new_tokens=6)
        events = generate(exact_model.new_session(), golden_tokens[:20], params, tokenizer)
        return [e.token_id for e in events if e.token_id is not None]

    first = run(7)
    assert len(first) >= 1 and first == run(7)


def test_decode_is_a_one_token_prefill(exact_model, golden_tokens):
    """`decode` skips prefill's chunking, not what it records: tokens, last_hidden and the
    snapshot on the interval boundary it crosses."""
    by_decode, by_prefill = session_with(exact_model, 8), session_with(exact_model, 8)
    by_decode.prefill(golden_tokens[:5])
    by_prefill.prefill(golden_tokens[:5])
    for t in golden_tokens[5:12]:
        assert torch.equal(by_decode.decode(t), by_prefill.prefill([t])[0])
        assert torch.equal(by_decode.last_hidden, by_prefill.last_hidden)
    assert by_decode.tokens == by_prefill.tokens == golden_tokens[:12]
    assert by_decode.truncate(8) == 0  # the snapshot at 8 was taken while decoding
    with pytest.raises(ValueError, match="token ids must lie in"):
        by_decode.decode(exact_model.args.vocab_size)
