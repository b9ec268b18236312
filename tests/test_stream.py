"""Streaming inference (spikedriven.stream): after t steps the runner's logits are the batch model's on the first t
frames (V1 and V2, dense and event engine, t = 1 .. T and past T), its framing is the dataset reader's, its state
saves and restores, bad streams give one clear error (or a defined result), and the command line runs."""
import copy

import numpy as np
import pytest
import torch

from spikedriven import MetaSpikeFormer, SpikeDrivenTransformer
from spikedriven.data.events import integrate_frames
from spikedriven.kernels import lif_multistep, plif_multistep
from spikedriven.neuron import LIF, ParametricLIF, neurons
from spikedriven.probe import calibrate_bn
from spikedriven.stream import EventFramer, StreamRunner
from spikedriven.stream.dense import StepNeuron


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


V1 = dict(img_size=16, in_channels=2, num_classes=5, embed_dim=32, depth=1, num_heads=4, T=3, pooling_stat="1100")
V2 = dict(img_size=16, in_channels=2, num_classes=5, embed_dim=(8, 16, 16, 24), num_heads=2, T=3,
          downsample_strides=(2, 1, 2, 1, 1))


def _model(kind, dtype=torch.float32, **kw):
    torch.manual_seed(0)
    m = SpikeDrivenTransformer(**{**V1, **kw}) if kind == "v1" else MetaSpikeFormer(**{**V2, **kw})
    if kind == "v2":  # at 4x4 tokens the V2 attention and head neurons stay silent at their own thresholds
        for _, n in neurons(m):
            n.v_threshold *= 0.5
    calibrate_bn(m, [torch.rand(4, m.T, 2, 16, 16) * 2])  # untrained BN (0, 1) would leave the network silent
    return m.eval().to(dtype)


def _frames(T, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return ((torch.rand(2, T, 2, 16, 16, generator=g) < 0.3) * 2.0).to(dtype)


def _batch_dense(model, x, t):
    m = copy.deepcopy(model)
    m.T = t
    with torch.no_grad():
        out = m(x[:, :t])
    return out.mean(0) if out.ndim == 3 else out  # tet: the mean of the per-step logits


# ------------------------------------------------------------------ the stepping neuron
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("plif", [False, True])
def test_step_neuron_is_bit_identical_to_the_multistep_neuron(dtype, plif):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(9, 3, 7, generator=g) * 1.5).to(dtype)
    n = ParametricLIF(init_tau=3.0) if plif else LIF(tau=2.0)
    backends = ["torch"] + (["auto"] if dtype == torch.float32 else [])  # auto: the fused C++ kernel
    store = {}
    step = StepNeuron(n, "n", store)
    with torch.no_grad():
        s_step = torch.cat([step(x[t:t + 1]) for t in range(9)])
        for b in backends:
            ref = plif_multistep(x, n.w, backend=b) if plif else lif_multistep(x, 1.0, 2.0, backend=b)
            assert torch.equal(s_step, ref), b
    assert 0 < s_step.mean() < 1  # some fire, some do not
    v_ref = lif_multistep(x, 1.0, 2.0, backend="torch", return_v=True)[1][-1] if not plif else None
    if v_ref is not None:
        assert torch.equal(store["n"], v_ref)  # the carried membrane is the reference's last membrane


# ------------------------------------------------------------------ equality with the batch model
@pytest.mark.parametrize("kind,kw", [("v1", {}), ("v1", dict(dvs_mode=True, tet=True)), ("v2", {}),
                                     ("v2", dict(kd=True))])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dense_stream_equals_the_batch_model_for_every_t(kind, kw, dtype):
    model = _model(kind, dtype, **kw)
    x = _frames(model.T + 2, dtype)
    run = StreamRunner(model, engine="dense")
    seen = []
    for t in range(1, model.T + 3):  # past T too: the batch model built with T = t
        got = run.step(x[:, t - 1])
        want = _batch_dense(model, x, t)
        if dtype == torch.float64:
            assert torch.equal(got, want), t
        else:
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        seen.append(got)
    assert run.steps == model.T + 2
    assert not all(torch.equal(seen[0], s) for s in seen[1:])  # the network is not silent: logits move
    assert any(v.abs().sum() > 0 for k, v in run.state_dict().items() if ".membrane." in k)


def _cpp_or_skip():
    from spikedriven.kernels._cpp import ENGINE_EXT

    if not ENGINE_EXT.load():
        pytest.skip("C++ engine kernels did not build here")


@pytest.mark.parametrize("kind,kw", [("v1", {}), ("v1", dict(dvs_mode=True, tet=True)), ("v2", dict(kd=True))])
def test_event_stream_equals_the_batch_engine_and_adds_only_the_new_frame(kind, kw):
    _cpp_or_skip()
    from spikedriven.engine import compile_model

    model = _model(kind, **kw)
    x = _frames(model.T + 2)
    run = StreamRunner(model, engine="events", threads=1)
    eng = compile_model(model, threads=1)
    sops = []
    for t in range(1, model.T + 3):
        got = run.step(x[:, t - 1])
        eng.plan.T = t  # the batch engine on the first t frames
        res = eng.run(x[:, :t])
        want = torch.from_numpy(res.logits.mean(0) if res.logits.ndim == 3 else res.logits)
        if kw.get("tet"):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)  # mean of per-step logits, other sum order
        else:
            assert torch.equal(got, want), t
        sops.append(sum(c.acc for c in run.last_counts if c.kind == "sop"))
        # the step did the additions of one frame only: all steps together = the batch run over t frames
        assert sum(sops) == sum(c.acc for c in res.counts if c.kind == "sop"), t
    assert min(sops) > 0


def test_the_dense_and_event_streams_agree_on_predictions():
    _cpp_or_skip()
    model = _model("v1")
    x = _frames(4)
    d, e = StreamRunner(model, engine="dense"), StreamRunner(model, engine="events", threads=1)
    for t in range(4):
        a, b = d.step(x[:, t]), e.step(x[:, t])
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


# ------------------------------------------------------------------ framing
def _recording(n=3000, H=16, W=16, seed=0, duration=100_000):
    rng = np.random.default_rng(seed)
    return {"t": np.sort(rng.integers(0, duration, n)).astype(np.int64) + 5_000,
            "x": rng.integers(0, W, n).astype(np.int16), "y": rng.integers(0, H, n).astype(np.int16),
            "p": rng.integers(0, 2, n).astype(np.uint8)}


@pytest.mark.parametrize("chunk", [1, 97, 10_000])
def test_framing_equals_the_dataset_readers_time_bins(chunk):
    ev = _recording()
    T = 5
    ref = integrate_frames(ev, T, 16, 16, split_by="time")  # what the reader gives with split_by="time"
    width = (int(ev["t"][-1]) - int(ev["t"][0])) // T
    fr = EventFramer(16, 16, width)
    frames = []
    for i in range(0, len(ev["t"]), chunk):
        fr.push({k: v[i:i + chunk] for k, v in ev.items()})
        frames.append(fr.pop()[0])
    frames.append(fr.flush()[0])
    got = np.concatenate(frames)
    assert got.sum() == len(ev["t"])  # no event lost
    assert np.array_equal(got[:T - 1], ref[:T - 1])
    assert np.array_equal(got[T - 1:].sum(0), ref[T - 1])  # the reader's last frame also holds the tail
    assert np.array_equal(ref[0, 1], np.bincount(ev["y"][(ev["t"] < ev["t"][0] + width) & (ev["p"] == 1)] * 16 +
                                                 ev["x"][(ev["t"] < ev["t"][0] + width) & (ev["p"] == 1)],
                                                 minlength=256).reshape(16, 16))


def test_framing_equals_the_dataset_reader_on_a_file(tmp_path):
    from spikedriven.cli.stream import read_events
    from spikedriven.data.events import EventFrameDataset

    ev = _recording(seed=3)
    np.savez(tmp_path / "rec.npz", **ev)
    ds = EventFrameDataset([tmp_path / "rec.npz"], [0], ["a"], 4, (16, 16), split_by="time")
    ref = ds.frames(0).numpy()
    width = (int(ev["t"][-1]) - int(ev["t"][0])) // 4
    fr = EventFramer(16, 16, width)
    fr.push(read_events(str(tmp_path / "rec.npz"), 16))  # what `spikedriven stream` feeds
    got = np.concatenate([fr.pop()[0], fr.flush()[0]])
    assert np.array_equal(got[:3], ref[:3]) and np.array_equal(got[3:].sum(0), ref[3])


def test_feed_steps_once_per_closed_bin_and_equals_stepping_the_frames():
    model = _model("v1")
    ev = _recording()
    width = 20_000
    fed = StreamRunner(model, engine="dense", bin_us=width)
    res = []
    for i in range(0, 3000, 700):
        res += fed.feed({k: v[i:i + 700] for k, v in ev.items()})
    res += fed.flush()
    frames = EventFramer(16, 16, width)
    frames.push(ev)
    fr = np.concatenate([frames.pop()[0], frames.flush()[0]])
    assert [b.index for b in res] == list(range(len(fr))) and sum(b.events for b in res) == 3000
    stepped = StreamRunner(model, engine="dense")
    for b, f in zip(res, fr):
        assert torch.equal(b.logits, stepped.step(torch.from_numpy(f[None])))
        assert b.latency_s > 0 and b.t_end - b.t_start == width


# ------------------------------------------------------------------ state
@pytest.mark.parametrize("engine", ["dense", "events"])
def test_state_saves_and_restores(tmp_path, engine):
    if engine == "events":
        _cpp_or_skip()
    model = _model("v2")
    ev = _recording()
    a = StreamRunner(model, engine=engine, bin_us=20_000, threads=1)
    first = a.feed({k: v[:1500] for k, v in ev.items()})
    a.save_state(tmp_path / "s.pt")
    rest_a = a.feed({k: v[1500:] for k, v in ev.items()}) + a.flush()
    b = StreamRunner(model, engine=engine, bin_us=20_000, threads=1)
    b.load_state(tmp_path / "s.pt")
    rest_b = b.feed({k: v[1500:] for k, v in ev.items()}) + b.flush()
    assert first and len(rest_a) == len(rest_b) > 0
    for x, y in zip(rest_a, rest_b):
        assert x.index == y.index and torch.equal(x.logits, y.logits)
    sd = torch.load(tmp_path / "s.pt", weights_only=True)  # tensors only
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    assert any(k.startswith(f"{engine}.membrane.") for k in sd) and "framer.pending" in sd
    other = StreamRunner(model, engine="events" if engine == "dense" else "dense", bin_us=20_000)
    with pytest.raises(ValueError, match="saved by the"):
        other.load_state_dict(sd)
    with pytest.raises(ValueError, match="not a neuron of this model"):
        b.load_state_dict({**sd, f"{engine}.membrane.nope": torch.zeros(1)})
    with pytest.raises(ValueError, match="bins of"):
        StreamRunner(model, engine=engine, bin_us=5).load_state_dict(sd)


def test_reset_forgets_and_a_batch_change_is_refused():
    model = _model("v1")
    x = _frames(2)
    r = StreamRunner(model)
    a = r.step(x[:, 0])
    r.step(x[:, 1])
    r.reset()
    assert torch.equal(r.step(x[:, 0]), a)
    with pytest.raises(ValueError, match="batch size|differs"):
        r.step(x[:1, 1])


# ------------------------------------------------------------------ bad streams
def test_bad_streams_are_clear_errors():
    model = _model("v1")
    r = StreamRunner(model, bin_us=10_000)
    ev = _recording(n=50)
    with pytest.raises(ValueError, match="timestamps must not decrease; event 3"):
        r.feed({**ev, "t": np.concatenate([ev["t"][:3], ev["t"][:3] - 1, ev["t"][6:]])})
    r.reset()
    r.feed({k: v[25:] for k, v in ev.items()})
    with pytest.raises(ValueError, match="before the last event already fed"):
        r.feed({k: v[:25] for k, v in ev.items()})
    r.reset()
    with pytest.raises(ValueError, match="outside the 16x16 sensor"):
        r.feed({**ev, "x": ev["x"] + 10})
    with pytest.raises(ValueError, match="polarity"):
        r.feed({**ev, "p": ev["p"] + 3})
    with pytest.raises(ValueError, match="missing"):
        r.feed(np.zeros(3, dtype=[("t", "i8"), ("x", "i2")]))
    with pytest.raises(ValueError, match="bin width"):
        StreamRunner(model).feed(ev)
    with pytest.raises(ValueError, match="frame is"):
        r.step(torch.zeros(2, 16, 16))
    with pytest.raises(ValueError, match="input channel"):
        r.step(torch.zeros(1, 3, 16, 16))


def test_empty_input_and_empty_bins_are_defined():
    model = _model("v1")
    r = StreamRunner(model, bin_us=10_000)
    none = {k: np.zeros(0, np.int64) for k in "txyp"}
    assert r.feed(none) == [] and r.flush() == [] and r.steps == 0  # nothing fed: nothing to step on
    # two events 55 ms apart: bins 1..4 are empty, each one a zero frame (time passes for the membranes)
    two = {"t": np.array([1_000, 56_000]), "x": np.array([3, 4]), "y": np.array([5, 6]), "p": np.array([1, 0])}
    res = r.feed(two) + r.flush()
    assert [b.events for b in res] == [1, 0, 0, 0, 0, 1]
    ref = StreamRunner(model)
    frames = torch.zeros(6, 1, 2, 16, 16)
    frames[0, 0, 1, 5, 3] = frames[5, 0, 0, 6, 4] = 1
    for b, f in zip(res, frames):
        assert torch.equal(b.logits, ref.step(f))
    quiet = r.advance(200_000)  # the clock moves on without events: bins 6..18 end by t = 200 ms
    assert [b.index for b in quiet] == list(range(6, 19)) and not any(b.events for b in quiet)


# ------------------------------------------------------------------ command line
def test_cli_stream(tmp_path, capsys):
    from spikedriven.cli import main

    model = _model("v1")
    ck = tmp_path / "m.pth"
    torch.save({"state_dict": model.state_dict(), "model_kwargs": {k: v for k, v in V1.items()}}, ck)
    ev = tmp_path / "rec.npz"
    np.savez(ev, **_recording())
    for engine in ("dense", "events"):
        if engine == "events":
            _cpp_or_skip()
        assert main(["stream", "--checkpoint", str(ck), "--events", str(ev), "--bin-ms", "25", "--engine", engine,
                     "--threads", "1"]) == 0
        out = capsys.readouterr().out
        assert "events/s" in out and "p99" in out and "final prediction" in out
        rows = [ln for ln in out.splitlines() if ln.strip() and ln.split()[0].isdigit()]
        assert len(rows) == 4  # 100 ms of events in 25 ms bins: 4 bins (the last one closed at the end)
        assert ("SOPs per bin" in out) == (engine == "events")
    bad = tmp_path / "bad.npz"
    np.savez(bad, **{**_recording(), "x": _recording()["x"] + 100})
    assert main(["stream", "--checkpoint", str(ck), "--events", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "outside the 16x16 sensor" in err and len(err.strip().splitlines()) == 1
    assert main(["stream", "--checkpoint", str(ck), "--events", str(tmp_path / "none.npz")]) == 2
    assert main(["stream", "--checkpoint", str(ck), "--events", str(ev), "--bin-ms", "0.0001"]) == 2
    assert "choose a wider bin" in capsys.readouterr().err
