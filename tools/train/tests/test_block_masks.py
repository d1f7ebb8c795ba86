"""State masks per 16-channel block (yunmin_train.block_masks): blocks follow the served order,
the magnitude block masks meet their targets with whole (block, n) pairs, the lane count equals
the engine's masked-scan plan (`yunmin inspect --sparsity`: per-layer scan_lanes), and a block
profile's served logits equal the toolkit's masked float64 forward. Tiny random models on the
CPU; the binary is $YUNMIN_BIN or build*/tools/yunmin.
"""
import json
import subprocess

import numpy as np
import torch

from test_default_model import yunmin_bin
from test_sparsity_engine import engine_logits
from yunmin_train import block_masks as B
from yunmin_train import masks as M
from yunmin_train.model import MambaConfig, MambaLM, load_sparsity_masks, save_model


def test_blocks_follow_the_served_order():
    order = np.array([5, 0, 3, 1, 4, 2])
    keep = np.array([True, True, True, False, True, True])
    blk, nb = B.block_index(order, keep, width=2)
    # served: 5, 0, 1, 4, 2 (3 dropped) -> blocks {5, 0}, {1, 4}, {2}
    assert nb == 3
    assert blk.tolist() == [0, 1, 2, -1, 1, 0]


def test_lanes_count_by_hand():
    # One layer, 4 channels, width 2, N 3: block {0, 1} has entries {0, 2} live in some
    # channel (4 lanes, 3 live); block {2, 3} has entry 1 only (2 lanes, 1 live).
    st = np.zeros((1, 4, 3), dtype=bool)
    st[0, 0, 0] = st[0, 1, 0] = st[0, 1, 2] = True
    st[0, 3, 1] = True
    live, lanes = B.lanes(np.ones((1, 4), bool), st, np.arange(4)[None], width=2)
    assert (live, lanes) == (4, 6)


def test_magnitude_block_masks_drop_whole_pairs_at_the_target():
    rng = np.random.default_rng(3)
    L, Di, N = 3, 40, 8                       # 3 blocks per layer, the last one 8 wide
    abs_s = rng.random((L, Di, N))
    order = np.stack([rng.permutation(Di) for _ in range(L)])
    for p in (0.3, 0.5, 0.7):
        st = B.magnitude_block_masks(abs_s, order, p)
        for l in range(L):
            blk, nb = B.block_index(order[l], np.ones(Di, bool))
            assert nb == 3
            pairs = np.stack([st[l][blk == b][0] for b in range(nb)])      # [nb, N]
            for b in range(nb):                # every channel of a block has the same mask
                assert (st[l][blk == b] == pairs[b]).all()
            assert (~pairs).sum() == M.round_half_up(p * nb * N)
            # The dropped pairs are the lowest mean |s| over the block's channels (float64
            # reference by a plain loop).
            score = np.array([[np.mean([abs_s[l, d, n] for d in range(Di) if blk[d] == b])
                               for n in range(N)] for b in range(nb)])
            assert score[~pairs].max() <= score[pairs].min()
        live, lanes = B.lanes(np.ones((L, Di), bool), st, order)
        assert live == lanes                   # block fill 1: no dead lane computed


def _tiny(tmp_path, seed=11):
    cfg = MambaConfig(vocab_size=97, hidden_size=24, state_size=16, num_hidden_layers=3,
                      expand=2, conv_kernel=4, time_step_rank=3)   # d_inner 48: 3 blocks
    model = MambaLM(cfg).reset_parameters(seed=seed)
    d = str(tmp_path / "m")
    save_model(model, d, dtype="float32")
    return cfg, model, d


def test_lanes_equal_the_engine_plan_and_served_logits_equal_the_reference(tmp_path):
    cfg, model, model_dir = _tiny(tmp_path)
    L, Di, N = cfg.num_hidden_layers, cfg.d_inner, cfg.state_size
    rng = np.random.default_rng(5)
    order = np.stack([rng.permutation(Di) for _ in range(L)]).astype(np.int32)
    ch = np.ones((L, Di), dtype=bool)
    ch[1, rng.choice(Di, 7, replace=False)] = False          # blocks over the kept channels
    block = B.magnitude_block_masks(rng.random((L, Di, N)), order, 0.5)
    scattered = rng.random((L, Di, N)) < 0.5
    ids = [int(v) for v in rng.integers(0, cfg.vocab_size, size=10)]
    m64 = model.double().eval()
    for name, st in (("block", block), ("scattered", scattered)):
        prof = str(tmp_path / f"{name}.safetensors")
        cl, sl = M.bool_to_logits(ch, st)
        M.save_profile(prof, cl, sl, "test", order)
        c = subprocess.run([yunmin_bin(), "inspect", "--model", model_dir, "--sparsity", prof,
                            "--json"], capture_output=True, text=True, timeout=120)
        assert c.returncode == 0, c.stderr
        eng = json.loads(c.stdout)["sparsity"]["layers"]
        for l in range(L):
            live, lanes = B.lanes(ch[l:l + 1], st[l:l + 1] & ch[l][:, None], order[l:l + 1])
            assert (eng[l]["live_states"], eng[l]["scan_lanes"]) == (live, lanes), (name, l)
        with torch.no_grad():
            want = m64(torch.tensor([ids]), masks=load_sparsity_masks(prof))[0].numpy()
        got = engine_logits(model_dir, ids, prof)
        diff = float(np.abs(got - want).max())
        print(f"{name}: max |engine - masked float64 ref| {diff:.2e}")
        assert diff <= 2e-4 * max(1.0, float(np.abs(want).max()))
    # Layer 1 has dropped channels: block masks there were chosen over all channels,
    # so only layers 0 and 2 are guaranteed whole blocks; there the fill is exactly 1.
    for l in (0, 2):
        live, lanes = B.lanes(ch[l:l + 1], block[l:l + 1], order[l:l + 1])
        assert live == lanes


def test_learned_block_export_keeps_whole_pairs():
    torch.manual_seed(2)
    lg = M.MaskLogits(2, 3, 4, 0.0, train_channels=False, train_states=True)
    with torch.no_grad():
        lg.state.normal_()
    order = np.tile(np.arange(48), (2, 1))
    blks = [B.block_index(order[l], np.ones(48, bool))[0] for l in range(2)]
    cl, sl = B.export_block(lg, blks, 0.5)
    assert (cl > 0).all() and sl.shape == (2, 48, 4)
    assert (sl <= 0).sum() == 48 * 2 * 4 // 2
    live, lanes = B.lanes(cl > 0, sl > 0, order)
    assert live == lanes
