"""All-in-One frames model: temporal token rolling cell by cell, no rolling in unimodal passes, the joint pass
against a hand-built reference, checkpoints.

    python -m pytest -q tests/test_allinone.py
"""
import torch
import torch.nn.functional as F

import checkpoint
import tokens
import allinone
from allinone import AllInOne, AllInOneConfig, roll_tokens


def tiny_cfg(**kw):
    base = dict(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.2,
                cls_token_id=2, sep_token_id=3, mask_token_id=4, frame_size=16, patch_size=4, num_frames=4)
    return AllInOneConfig(**{**base, **kw})


def batch(B=2, T=4, S=16, Lt=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (B, T, 3, S, S), generator=g, dtype=torch.uint8)
    ids = torch.randint(5, 60, (B, Lt), generator=g)
    mask = torch.ones(B, Lt, dtype=torch.bool)
    mask[1, 3:] = False  # padded text
    return frames, ids, mask


def test_roll_tokens_cell_by_cell_against_a_loop():
    B, T, N, H = 2, 4, 17, 3
    x = torch.arange(B * T * N * H, dtype=torch.float32).view(B, T, N, H)  # every cell distinct
    fold = N // 8  # 2
    out = roll_tokens(x, fold)
    for b in range(B):
        for t in range(T):
            for n in range(N):
                if n == 0:
                    src = t  # the frame's CLS stays
                elif n <= fold:
                    src = t - 1 if t > 0 else T - 1  # from the previous frame, circular
                elif n >= N - fold:
                    src = t + 1 if t < T - 1 else 0  # from the next frame, circular
                else:
                    src = t
                assert torch.equal(out[b, t, n], x[b, src, n]), (b, t, n)
    # the circular ends and the fold slots, spelled out
    assert torch.equal(out[:, 0, 1:3], x[:, 3, 1:3]) and torch.equal(out[:, 3, 15:], x[:, 0, 15:])
    assert torch.equal(out[:, :, 3:15], x[:, :, 3:15]) and torch.equal(out[:, :, 0], x[:, :, 0])
    assert torch.equal(roll_tokens(x, 0), x)
    assert torch.equal(roll_tokens(x[:, :1], fold), x[:, :1])  # one frame: nothing to exchange


def test_unimodal_passes_do_not_roll(monkeypatch):
    torch.manual_seed(0)
    m = AllInOne(tiny_cfg()).eval()
    frames, ids, mask = batch()
    calls = []
    real = allinone.roll_tokens
    monkeypatch.setattr(allinone, "roll_tokens", lambda x, fold: calls.append(fold) or real(x, fold))
    with torch.no_grad():
        h = m.video_states(frames)
        m.encode_text(ids, mask)
        assert calls == []
        m(frames, ids, mask)
    assert calls == [2, 2]  # once before each of the 2 layers, fold = 17 // 8
    # a video-only pass treats every frame alone: changing frame 1 leaves frame 0's states unchanged
    other = frames.clone()
    other[:, 1] = 255 - other[:, 1]
    with torch.no_grad():
        h2 = m.video_states(other)
    assert torch.allclose(h[:, 0], h2[:, 0], atol=1e-6) and not torch.allclose(h[:, 1], h2[:, 1], atol=1e-3)


def reference_joint(m, frames, ids, mask, roll=True):
    """The joint pass built by hand from the model's weights and its Bert layers (not its forward)."""
    cfg, bert = m.config, m.bert
    B, T, _, S, _ = frames.shape
    P, H = cfg.patch_size, cfg.hidden_size
    # text row: [CLS] w [SEP] [PAD], word + position + type 0, LayerNorm
    n = mask.sum(1).tolist()
    L = ids.shape[1] + 2
    tid = torch.full((B, L), cfg.pad_token_id)
    for b in range(B):
        tid[b, 0], tid[b, 1:1 + n[b]], tid[b, 1 + n[b]] = cfg.cls_token_id, ids[b, :n[b]], cfg.sep_token_id
    t = bert.ln_emb(bert.wte(tid) + bert.wpe.weight[:L] + bert.wtt.weight[0])  # (B, L, H)
    # frame tokens: patches as a matmul with the convolution's weight, CLS, spatial + temporal, type 1
    x = frames.float() / 255 * 2 - 1
    patches = x.unfold(3, P, P).unfold(4, P, P)  # (B, T, 3, S/P, S/P, P, P)
    patches = patches.permute(0, 1, 3, 4, 2, 5, 6).reshape(B, T, (S // P) ** 2, 3 * P * P)
    emb = patches @ m.frames.conv.weight.reshape(H, -1).T + m.frames.conv.bias
    emb = torch.cat([m.frames.cls.expand(B, T, 1, H), emb], 2) + m.frames.pos[0] + m.frames.temporal[:T]
    v = bert.ln_emb(emb + bert.wtt.weight[1])  # (B, T, N, H)
    N = v.shape[2]
    keys = torch.cat([torch.arange(L)[None] < (torch.tensor(n) + 2)[:, None], torch.ones(B, N, dtype=torch.bool)], 1)
    rows = torch.cat([t[:, None].expand(B, T, L, H), v], 2)  # (B, T, L+N, H)
    fold = N // 8
    for layer in bert.layers:
        if roll:
            r = rows.clone()
            for tt in range(T):
                r[:, tt, L + 1:L + 1 + fold] = rows[:, (tt - 1) % T, L + 1:L + 1 + fold]
                r[:, tt, L + N - fold:] = rows[:, (tt + 1) % T, L + N - fold:]
            rows = r
        out = [layer(rows[:, tt], keys[:, None, None, :])[0] for tt in range(T)]
        rows = torch.stack(out, 1)
    return rows.mean(1)


def test_joint_pass_equals_hand_rolled_reference_and_rolling_matters():
    torch.manual_seed(0)
    m = AllInOne(tiny_cfg()).eval()
    frames, ids, mask = batch()
    with torch.no_grad():
        h = m(frames, ids, mask)
        h_off = m(frames, ids, mask, roll=False)
        ref = reference_joint(m, frames, ids, mask)
        ref_off = reference_joint(m, frames, ids, mask, roll=False)
    assert h.shape == (2, 5 + 2 + 17, 16)
    assert torch.allclose(h, ref, atol=1e-5), (h - ref).abs().max()
    assert torch.allclose(h_off, ref_off, atol=1e-5)
    assert (h - h_off).abs().max() > 1e-2  # the frames do interact through the rolled slots
    # without rolling, the text part of row t depends on frame t only: frame order does not matter
    perm = frames[:, [2, 0, 3, 1]]
    with torch.no_grad():
        m.frames.temporal.zero_()
        a, b = m(frames, ids, mask, roll=False), m(perm, ids, mask, roll=False)
        c, d = m(frames, ids, mask), m(perm, ids, mask)
    assert torch.allclose(a[:, :7], b[:, :7], atol=1e-5) and not torch.allclose(c[:, :7], d[:, :7], atol=1e-4)


def test_checkpoint_round_trip_and_bert_loading(tmp_path):
    from transformers import BertConfig, BertForMaskedLM
    torch.manual_seed(0)
    hf = BertForMaskedLM(BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=32, initializer_range=0.2)).eval()
    hf.save_pretrained(tmp_path / "bert")
    m = AllInOne.from_pretrained(str(tmp_path / "bert"), frame_size=16, patch_size=4, num_frames=4, cls_token_id=2,
                                 sep_token_id=3, mask_token_id=4).eval()
    assert torch.equal(m.bert.layers[1].fc2.weight, hf.bert.encoder.layer[1].output.dense.weight)
    ids = torch.randint(5, 60, (2, 6))
    with torch.no_grad():  # a text-only pass is BERT's own
        ours = m.bert(F.pad(ids, (1, 1), value=3), None)
        ref = hf.bert(F.pad(ids, (1, 1), value=3)).last_hidden_state
    assert torch.allclose(ours, ref, atol=1e-5)
    checkpoint.save_model_dir(m, str(tmp_path / "saved"))
    back = checkpoint.load_model(str(tmp_path / "saved"))  # one checkpoint format: the config names the model kind
    assert isinstance(back, AllInOne) and back.config == m.config
    frames, t, mask = batch()
    with torch.no_grad():
        assert torch.equal(back.eval()(frames, t, mask), m(frames, t, mask))


# ----------------------------------------------------------------------------------------------------------
# video files (PyAV) and the frames pipeline on a tiny rendered world

import os  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import video  # noqa: E402


def write_clip(path, frames, fps, codec):
    """Encode frames (n, H, W, 3) uint8 with PyAV, independently of world.write_frames."""
    av = pytest.importorskip("av")
    with av.open(path, "w") as c:
        st = c.add_stream(codec, rate=fps)
        st.width, st.height, st.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            for p in st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in st.encode():
            c.mux(p)


def test_read_video_round_trip_frames_size_and_values(tmp_path):
    n, fps = 12, 4  # 3 s of video, frame k shows grey level 20 k
    frames = np.stack([np.full((48, 64, 3), 20 * k, np.uint8) for k in range(n)])
    frames[:, :, :8] = 255  # a white band at the left edge: the centre crop drops it
    path = str(tmp_path / "clip.mkv")
    write_clip(path, frames, fps, "mpeg4")
    assert abs(video.video_duration(path) - 3.0) < 0.3
    x = video.read_video(path, num_frames=3, size=32)  # middles of [0, 1), [1, 2), [2, 3) s: frames 2, 6, 10
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.uint8
    means = x.float().mean((1, 2, 3))
    assert torch.allclose(means, torch.tensor([40.0, 120.0, 200.0]), atol=4), means  # within codec error
    y = video.read_video(path, num_frames=2, size=32, start=1.0, end=2.0)  # times 1.25, 1.75: frames 5, 7
    assert torch.allclose(y.float().mean((1, 2, 3)), torch.tensor([100.0, 140.0]), atol=4)
    # training draws a random time per segment: always inside its segment
    rng = np.random.default_rng(0)
    for _ in range(5):
        t = video.sample_times(0.0, 3.0, 3, True, rng)
        assert all(k <= tk < k + 1 for k, tk in enumerate(t))


def test_resize_crop_by_hand():
    a = np.arange(4 * 8 * 3, dtype=np.uint8).reshape(1, 4, 8, 3)  # short side already 4: crop columns 2..5
    out = video.resize_crop(a, 4)
    assert out.shape == (1, 3, 4, 4) and torch.equal(out[0], torch.from_numpy(a[0, :, 2:6]).permute(2, 0, 1))
    flat = np.full((2, 30, 50, 3), 77, np.uint8)
    assert torch.equal(video.resize_crop(flat, 10), torch.full((2, 3, 10, 10), 77, dtype=torch.uint8))


def test_bad_video_files_are_named(tmp_path, monkeypatch):
    bad, empty = tmp_path / "bad.mp4", tmp_path / "empty.webm"
    bad.write_bytes(b"not a video at all" * 50)
    empty.write_bytes(b"")
    for p in (bad, empty):
        with pytest.raises(ValueError, match=str(p)):
            video.read_video(str(p))
    arr = tmp_path / "frames.npy"
    np.save(arr, np.zeros((3, 8, 8), np.uint8))  # no colour axis
    with pytest.raises(ValueError, match="frames.npy"):
        video.read_video(str(arr), size=8)
    monkeypatch.setitem(__import__("sys").modules, "av", None)  # PyAV missing: the message says how to install it
    with pytest.raises(ImportError, match="pip install av"):
        video.read_video(str(bad))


def test_vtm_pairs_mismatch_other_videos_only():
    from masking import vtm_pairs
    g = torch.Generator().manual_seed(0)
    groups = torch.arange(64) // 2  # two clips per video
    idx, match = vtm_pairs(64, g, groups=groups)
    neg = match == 0
    assert torch.equal(idx[~neg], torch.arange(64)[~neg])
    assert (groups[idx[neg]] != groups[neg]).all() and 20 < int(neg.sum()) < 44
    idx, match = vtm_pairs(2, g, groups=torch.tensor([5, 5]))  # one video: nothing to mismatch with
    assert match.tolist() == [1, 1] and idx.tolist() == [0, 1]


@pytest.fixture(scope="module")
def video_world(tmp_path_factory):
    import world
    out = str(tmp_path_factory.mktemp("vworld") / "tiny")
    world.synth(out, seed=0, size="tiny", video=True)
    return out


def test_world_video_keeps_the_features_and_draws_every_msrvtt_clip(video_world, tiny_world):
    import world
    import hashlib
    import json
    files = sorted(os.path.relpath(os.path.join(r, f), tiny_world) for r, _, fs in os.walk(tiny_world) for f in fs
                   if not f.startswith("tokens-"))  # (token caches other tests may have written)
    assert len(files) > 300
    for rel in files:  # drawing frames changes nothing the features model reads: every file byte-identical
        h = [hashlib.sha1(open(os.path.join(d, rel), "rb").read()).hexdigest() for d in (video_world, tiny_world)]
        assert h[0] == h[1] or rel == "world.json", rel
    summary = json.load(open(os.path.join(video_world, "world.json")))
    assert summary.pop("videos") == {"howto100m": 30, "msrvtt": 90}
    assert summary == json.load(open(os.path.join(tiny_world, "world.json")))
    store = video.VideoStore(os.path.join(video_world, "msrvtt", "videos"))
    feats = video.open_features(os.path.join(video_world, "msrvtt", "feats"))
    assert store.ids == feats.ids and all(store.length(v) == feats.length(v) for v in store.ids[:5])
    w = world.World(np.random.default_rng([0, 0]), 4)
    segs, T = world.timeline(np.random.default_rng(1), w.tasks[0].steps[:2])
    a, b = (w.render_frames(np.random.default_rng(2), T, segs, w.tasks[0]) for _ in range(2))
    assert a.shape == (T, 32, 32, 3) and np.array_equal(a, b)  # deterministic by seed


def test_one_pretraining_step_and_one_finetuning_epoch(video_world, tmp_path):
    import finetune
    import train
    pre = str(tmp_path / "pre")
    args = ["--model", "allinone", "--data", video_world, "--out", pre, "--hidden", "32", "--heads", "2",
            "--layers", "2", "--batch_videos", "4", "--max_text_len", "16", "--max_steps", "1", "--eval_every", "0"]
    assert train.main(args) == 1
    m = checkpoint.load_model(os.path.join(pre, "ckpt.pt"))
    assert isinstance(m, AllInOne) and m.config.frame_size == 32 and m.config.patch_size == 8
    res = finetune.main(["--task", "qa", "--init", os.path.join(pre, "model"), "--data", video_world,
                         "--out", str(tmp_path / "ft"), "--epochs", "1", "--batch_size", "8"])
    assert 0.0 <= res["acc"] <= 100.0
    assert os.path.exists(tmp_path / "ft" / "qa-frames" / "best.pt")


def test_frames_cosine_finetuning_ranks_by_cosine_in_evaluate_and_use(video_world, tmp_path):
    """--temperature works for frames: the best.pt ranks by cosine in evaluate.py and in use.py search alike."""
    import evaluate
    import finetune
    import metrics
    import readers
    import train
    import use
    pre = str(tmp_path / "pre")
    train.main(["--model", "allinone", "--data", video_world, "--out", pre, "--hidden", "32", "--heads", "2",
                "--layers", "1", "--batch_videos", "4", "--max_text_len", "16", "--max_steps", "1", "--eval_every", "0",
                "--no-probe"])
    finetune.main(["--task", "retrieval", "--init", os.path.join(pre, "model"), "--data", video_world, "--out",
                   str(tmp_path / "ft"), "--epochs", "1", "--batch_size", "8", "--temperature", "0.05"])
    best = str(tmp_path / "ft" / "retrieval-msrvtt-frames" / "best.pt")
    tm = checkpoint.load_finetuned(best)
    assert tm.cosine
    tok = tokens.load_tokenizer(video_world)
    got = evaluate.run_frames_task("retrieval", tm, video_world, "test", tok)
    # by hand: unit vectors of the two passes, then the paper's metrics
    recs, store = readers.load_retrieval(video_world, "msrvtt", "test", videos=True)
    c = tm.vlm.config
    with torch.no_grad():
        tm.vlm.eval()
        v = torch.cat([tm.vlm.encode_video(store.clip(r["video_id"], r.get("start"), r.get("end"), c.num_frames,
                                                      c.frame_size)[None]) for r in recs])
        ids = [tok.encode(r["texts"][0], add_special_tokens=False).ids[:c.max_text_len - 2] for r in recs]
        t = torch.cat([tm.vlm.encode_text(torch.tensor([x]), torch.ones(1, len(x), dtype=torch.bool)) for x in ids])
    want = metrics.retrieval_metrics((F.normalize(t, dim=-1) @ F.normalize(v, dim=-1).T).numpy())
    assert got == pytest.approx(want)
    raw = metrics.retrieval_metrics((t @ v.T).numpy())
    assert raw != pytest.approx(want)  # the two rankings differ here, so the check above can fail
    csv_path = os.path.join(video_world, "msrvtt", "MSRVTT_JSFUSION_test.csv")
    found = use.main(["search", "--ckpt", best, "--videos", os.path.join(video_world, "msrvtt", "videos"),
                      "--queries", csv_path, "--only_named", "--data", video_world])
    assert found == pytest.approx(got, abs=1e-9)


def test_frames_finetuning_stopped_inside_an_epoch_resumes_to_the_same_weights(video_world, tmp_path,
                                                                             stop_and_resume):
    """The frames model fine-tunes through finetune.run like VLM: a stop after two steps saves the position and
    the RNG streams, and --resume ends on exactly the weights of an uninterrupted run."""
    import dataclasses
    import finetune
    import train
    pre = str(tmp_path / "pre")
    train.main(["--model", "allinone", "--data", video_world, "--out", pre, "--hidden", "32", "--heads", "2",
                "--layers", "1", "--batch_videos", "4", "--max_text_len", "16", "--max_steps", "1", "--eval_every", "0",
                "--no-probe"])
    cfg = dataclasses.replace(finetune.FinetuneConfig(), data=video_world, init=os.path.join(pre, "model"), epochs=1,
                              batch_size=4)
    a, b, got = stop_and_resume(cfg, "retrieval", "retrieval-msrvtt-frames")
    assert a["step"] == b["step"] > 2 and set(got) == {"R1", "R5", "R10", "MedR"}
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    with pytest.raises(SystemExit, match="frames model"):  # segmentation has no frames recipe
        finetune.run(dataclasses.replace(cfg, out=str(tmp_path / "c")), "segmentation", (False, 0, 1, "cpu"))


def test_use_search_on_video_files_reproduces_the_frames_runner(video_world, tmp_path, capsys):
    """use.py reads the world's rendered .mp4 files for a frames model and ranks them as evaluate.py does."""
    import evaluate
    import use
    tok = tokens.load_tokenizer(video_world)
    ids = tokens.special_ids(tok)
    torch.manual_seed(0)
    m = AllInOne(tiny_cfg(vocab_size=tok.get_vocab_size(), frame_size=32, patch_size=8, num_frames=3,
                          max_text_len=24, cls_token_id=ids["cls"], sep_token_id=ids["sep"],
                          mask_token_id=ids["mask"], pad_token_id=ids["pad"])).eval()
    d = str(tmp_path / "model")
    checkpoint.save_model_dir(m, d, tokenizer=tok)
    ref = evaluate.run_frames_task("retrieval", m, video_world, "test", tok)
    csv_path = os.path.join(video_world, "msrvtt", "MSRVTT_JSFUSION_test.csv")
    got = use.main(["search", "--ckpt", d, "--videos", os.path.join(video_world, "msrvtt", "videos"),
                    "--queries", csv_path, "--only_named", "--topk", "2"])
    assert got == pytest.approx(ref, abs=1e-9)
    assert ref["MedR"] > 1  # a ranking that can be wrong
    with pytest.raises(SystemExit, match="frames model"):
        use.main(["caption", "--ckpt", d, "--videos", os.path.join(video_world, "msrvtt", "videos")])


# ---- DDP: the frames model in 2 processes (gloo, CPU) ---------------------------------------------------------

def _frames_batch():
    g = torch.Generator().manual_seed(3)
    return {"frames": torch.randint(0, 256, (4, 4, 3, 16, 16), generator=g, dtype=torch.uint8),
            "text_ids": torch.randint(5, 60, (4, 5), generator=g), "text_mask": torch.ones(4, 5, dtype=torch.bool)}


def _frames_loss(m, b):
    """A mean over examples of the joint pass (rolling on) and both pooled vectors: two halves averaged over the
    ranks equal the whole batch in one process."""
    joint = m(b["frames"], b["text_ids"], b["text_mask"]).pow(2).mean((1, 2))  # (B,)
    pooled = m.encode_video(b["frames"]).pow(2).sum(-1) + m.encode_text(b["text_ids"], b["text_mask"]).pow(2).sum(-1)
    return (joint + pooled).mean(), {}


def _frames_model():
    torch.manual_seed(0)
    return AllInOne(tiny_cfg())


def test_frames_model_ddp_two_processes_average_gradients(tmp_path):
    import functools
    from conftest import ddp_vs_one_process
    # SGD is linear in the gradient: the averaging shows exactly
    w0, w1, start, single = ddp_vs_one_process(tmp_path, _frames_model, _frames_loss, _frames_batch,
                                               functools.partial(torch.optim.SGD, lr=0.1))
    assert not torch.equal(single["frames.conv.weight"], start["frames.conv.weight"])  # the frame embedding moved
    for k in single:
        assert torch.equal(w0[k], w1[k]), k  # ranks agree exactly
        torch.testing.assert_close(w0[k], single[k], rtol=1e-5, atol=1e-6)
