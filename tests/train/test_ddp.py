"""Data-parallel training: 2 processes under DistributedDataParallel (gloo, CPU) with
batch_size 1 each take the same steps as one process with the combined batch of 2.

Tolerance: both runs compute the same float32 terms on the same items; they differ only
in reduction order (a batch of 2 vs two batches of 1 averaged by the all-reduce; the
codes' sparse rows summed after a gather) and in how the CPU kernels block a batch of 1
vs 2. Those are a few ulp per gradient; two AdamW/SparseAdam steps (updates of about lr
per parameter, lr 1e-3 / 1e-2) keep them at ~1e-7 absolute. rtol 1e-5 / atol 1e-6 is
thus loose enough for rounding and ~1000x tighter than one step's update, so a missing
1/world, an unreduced code gradient, a rank that skipped a term or a different item's
noise fails it.

The discriminator steps with SGD here (the thesis' optimiser; the cpu-demo preset uses
Adam): Adam's first update lr * g / (|g| + eps) turns a rounding-level gradient (|g| ~ eps,
e.g. a weight whose input channel is all zero at step 1) into an update that differs by
~1% of lr between the two runs (measured: 1.8e-6 on one element of D with g_1 ~ 1e-9),
which no tolerance tied to rounding can absorb. SGD's update is linear in the reduced
gradient, so D's parameters check the all-reduce directly.
"""

import gc
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from npht.train.config import TrainConfig
from npht.train.losses import LossWeights
from npht.train.identity import IdentityTrainer

RTOL, ATOL = 1e-5, 1e-6
STEPS = 2


def _cfg(stages, batch_size, **kw):
    # render_jitter off: the sampler's jitter is one stream per process (documented);
    # EDR weighted up from 1e-5 so that its per-item noise visibly moves the parameters;
    # 16^2 planes: a generator without BatchNorm layers (on CUDA the trainer converts them to
    # SyncBatchNorm; DDP refuses SyncBatchNorm on CPU, where BatchNorm sees each rank's batch)
    return TrainConfig.preset("cpu-demo", progress=False, stage_epochs=stages, ckpt_every=0, image_every=0,
                              batch_size=batch_size, render_jitter=False, plane_resolution=16,
                              disc_optimizer="sgd", **{"weights": LossWeights.thesis().replace(edr=10.0), **kw})


def _worker(rank, world, init, data_root, out, cfg_dict, steps=STEPS, resume=False):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        tr = IdentityTrainer(TrainConfig.from_dict(cfg_dict), data_root, out, resume=resume)
        assert isinstance(tr.step_module, torch.nn.parallel.DistributedDataParallel)
        assert tr.disc is None or isinstance(tr.disc_module, torch.nn.parallel.DistributedDataParallel)
        tr.train(max_steps=steps)
        torch.save(tr.state_dict(), os.path.join(out, f"rank{rank}.pt"))
        tr = None
        gc.collect()  # the trainer (its DDP) before the process group, as the CLI does
    finally:
        dist.destroy_process_group()


def _spawn(tmp_path, name, data_root, out, cfg, steps=STEPS, resume=False):
    init = "file://" + str(tmp_path / f"rendezvous-{name}")
    mp.spawn(_worker, args=(2, init, data_root, out, cfg.to_dict(), steps, resume), nprocs=2, join=True)
    return [torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=False) for r in range(2)]


def _flat(state, prefix=""):
    """All tensors (and numbers) of a nested state dict, by path."""
    out = {}
    if isinstance(state, dict):
        for k, v in state.items():
            out.update(_flat(v, f"{prefix}/{k}"))
    elif isinstance(state, (list, tuple)):
        for i, v in enumerate(state):
            out.update(_flat(v, f"{prefix}/{i}"))
    elif isinstance(state, torch.Tensor):
        out[prefix] = state.to_dense() if state.is_sparse else state
    elif isinstance(state, (int, float)):
        out[prefix] = torch.tensor(float(state), dtype=torch.float64)
    return out


def _trained(state):
    keys = ["model", "density", "opt", "opt_codes", "disc", "opt_d", "global_step", "epoch"]
    return _flat({k: state[k] for k in keys if k in state})


@pytest.mark.parametrize("stages", [(5, 5, 5), (0, 5, 5)], ids=["stage1-2d-and-disc", "stage2-3d"])
def test_two_process_ddp_equals_combined_batch(data_root, tmp_path, stages):
    out = str(tmp_path / "ddp")
    os.makedirs(out)
    r0, r1 = _spawn(tmp_path, "ddp", data_root, out, _cfg(stages, 1))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = IdentityTrainer(_cfg(stages, 2), data_root, tmp_path / "one")
        one.train(max_steps=STEPS)
    finally:
        torch.set_num_threads(threads)
    ref = one.state_dict()
    assert ref["global_step"] == r0["global_step"] == STEPS and ref["stage"] == r0["stage"] == stages.index(5) + 1

    a, b, c = _trained(ref), _trained(r0), _trained(r1)
    assert a.keys() == b.keys() == c.keys()
    if stages[0]:
        assert any(k.startswith("/disc/") for k in a)
    assert any(k.startswith("/opt_codes/state") for k in a)
    for k in a:   # the ranks hold the same model (same reduced gradients)
        torch.testing.assert_close(b[k], c[k], rtol=0, atol=0, msg=f"rank 0 vs rank 1: {k}")
    init_state = IdentityTrainer(_cfg(stages, 2), data_root, tmp_path / "init").state_dict()
    start = _trained(init_state)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=RTOL, atol=ATOL, msg=f"2 ranks vs combined batch: {k}")
    moved = [k for k in a if k in start and not torch.equal(start[k], a[k])]
    assert any(k.startswith("/model/") for k in moved)  # the steps did change the model
    assert any(k.startswith("/disc/") for k in moved) == bool(stages[0])  # and D where it trains

    # rank 0 alone wrote the log and the checkpoint (the mean over ranks of each term)
    assert os.path.exists(os.path.join(out, "checkpoint.pt")) and os.path.exists(os.path.join(out, "log.csv"))


def _recording_sampler_call(log):
    """An ErrorBoundSampler.__call__ that also appends ``(rounds, alone)`` to ``log``: the
    rounds it ran, and those the same call runs without its ``reduce_unconverged`` (this
    process's rays alone deciding; deterministic here, the render jitter being off)."""
    from dataclasses import replace

    from npht.render.sampler import ErrorBoundSampler

    call = ErrorBoundSampler.__call__

    def recording(self, *args, **kw):
        out = call(self, *args, **kw)
        rounds = self.last_stats["rounds"]
        alone = replace(self, reduce_unconverged=None)
        call(alone, *args, **kw)
        log.append((rounds, alone.last_stats["rounds"]))
        return out

    return recording


def _rounds_worker(rank, world, init, data_root, out, cfg_dict, steps):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        from npht.render.sampler import ErrorBoundSampler

        rounds = []
        ErrorBoundSampler.__call__ = _recording_sampler_call(rounds)   # this spawned process only
        tr = IdentityTrainer(TrainConfig.from_dict(cfg_dict), data_root, out)
        tr.train(max_steps=steps)
        torch.save({"rounds": rounds, "state": tr.state_dict()}, os.path.join(out, f"rounds{rank}.pt"))
        tr = None
        gc.collect()
    finally:
        dist.destroy_process_group()


def test_ddp_sampler_rounds_stop_as_on_the_combined_batch(data_root, tmp_path, monkeypatch):
    """The error-bound sampler stops its rounds when every ray has converged. With more
    rounds, a larger eps and beta than the config above (whose renders always run all 2 of
    theirs), the two items' rays converge after different rounds: alone, one rank would stop
    before the other and the combined batch (measured: rounds 7 and 6 at step 1, 8 and 4 at
    step 2). The trainer all-reduces the sampler's per-round decision, so both ranks run the
    combined batch's rounds and the 2-rank steps equal the combined batch's (without it the
    parameters differ beyond the tolerance)."""
    from npht.render.sampler import ErrorBoundSampler

    cfg = _cfg((5, 5, 5), 1, max_total_iters=8, samples=(8, 16, 4), sampler_eps=0.5, beta_init=0.05)
    out = str(tmp_path / "ddp")
    os.makedirs(out)
    init = "file://" + str(tmp_path / "rendezvous-rounds")
    mp.spawn(_rounds_worker, args=(2, init, data_root, out, cfg.to_dict(), STEPS), nprocs=2, join=True)
    got = [torch.load(os.path.join(out, f"rounds{r}.pt"), weights_only=False) for r in range(2)]

    combined = []
    monkeypatch.setattr(ErrorBoundSampler, "__call__", _recording_sampler_call(combined))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = IdentityTrainer(cfg.replace(batch_size=2), data_root, tmp_path / "one")
        one.train(max_steps=STEPS)
    finally:
        torch.set_num_threads(threads)
    r0, r1 = got[0]["rounds"], got[1]["rounds"]
    assert len(r0) == len(r1) == len(combined) == STEPS          # one render per step
    assert [r for r, _ in combined] == [a for r, a in combined]  # one process: its own decision
    # the ranks alone would stop at other rounds (the case this test is for) ...
    assert any(a0 != a1 for (_, a0), (_, a1) in zip(r0, r1)), (r0, r1)
    # ... but run the combined batch's: the latest of their own
    for (g0, a0), (g1, a1), (c, _) in zip(r0, r1, combined):
        assert g0 == g1 == c == max(a0, a1), (r0, r1, combined)

    a, b, c = _trained(one.state_dict()), _trained(got[0]["state"]), _trained(got[1]["state"])
    assert a.keys() == b.keys() == c.keys() and any(k.startswith("/disc/") for k in a)
    for k in a:
        torch.testing.assert_close(b[k], c[k], rtol=0, atol=0, msg=f"rank 0 vs rank 1: {k}")
        torch.testing.assert_close(b[k], a[k], rtol=RTOL, atol=ATOL, msg=f"2 ranks vs combined batch: {k}")


def _stages_worker(rank, world, init, data_root, out, cfg_dict, steps):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        tr = IdentityTrainer(TrainConfig.from_dict(cfg_dict), data_root, out)
        step, seen = tr.step, []

        def step_recording(batch):
            row = step(batch)
            seen.append((row["stage"], [n for n, p in tr.step_module.named_parameters() if p.grad is None]))
            return row

        tr.step = step_recording
        tr.train(max_steps=steps)
        torch.save({"find_unused": tr.step_module.find_unused_parameters, "seen": seen, "state": tr.state_dict()},
                   os.path.join(out, f"stages{rank}.pt"))
        tr = step = None
        gc.collect()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("case", ["triplane", "npm", "npm-sn-eik"])
def test_ddp_runs_without_find_unused_parameters_through_the_stages(data_root, tmp_path, case):
    """DDP runs without find_unused_parameters (a traversal of the autograd graph every step):
    the one parameter some stages leave without gradient, the density's beta (stages 2-3 have
    no rendered maps in the loss; 3D-only models none at all), is kept out of DDP and reduced
    by hand where it is used. One step per stage (1 -> 2 -> 3) on 2 ranks equals the combined
    batch's steps in one process, the density's beta included. Weights without a term of the
    SDF's values (npm-sn-eik: L_sn and L_eik alone) leave the last layer's bias unused: there
    DDP finds unused parameters, as before."""
    beta = "module.density.beta_param"
    if case == "triplane":
        cfg = _cfg((1, 1, 5), 1)
    else:
        w = LossWeights.npm().replace(ss=0.0, nsp=0.0) if case == "npm-sn-eik" else LossWeights.npm()
        cfg = TrainConfig.preset("npm", progress=False, stage_epochs=(1, 1, 5), ckpt_every=0, image_every=0,
                                 batch_size=1, npm_hidden=32, z_dim=8, weights=w)
    unused = {"triplane": [[], [beta], [beta]], "npm": [[beta]] * 3,
              "npm-sn-eik": [["module.model.mlp.linears.8.bias", beta]] * 3}[case]
    out = str(tmp_path / "ddp")
    os.makedirs(out)
    init = "file://" + str(tmp_path / "rendezvous-stages")
    mp.spawn(_stages_worker, args=(2, init, data_root, out, cfg.to_dict(), 3), nprocs=2, join=True)
    got = [torch.load(os.path.join(out, f"stages{r}.pt"), weights_only=False) for r in range(2)]
    for g in got:
        assert g["find_unused"] is (case == "npm-sn-eik")
        # the parameters without gradient after each step's backward (the density's only where unused)
        assert g["seen"] == list(zip((1, 2, 3), unused)), g["seen"]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = IdentityTrainer(cfg.replace(batch_size=2), data_root, tmp_path / "one")
        start = {k: v.clone() for k, v in _trained(one.state_dict()).items()}
        one.train(max_steps=3)
    finally:
        torch.set_num_threads(threads)
    a, b, c = _trained(one.state_dict()), _trained(got[0]["state"]), _trained(got[1]["state"])
    assert a.keys() == b.keys() == c.keys() and one.stage.index == got[0]["state"]["stage"] == 3
    for k in a:
        torch.testing.assert_close(b[k], c[k], rtol=0, atol=0, msg=f"rank 0 vs rank 1: {k}")
        torch.testing.assert_close(b[k], a[k], rtol=RTOL, atol=ATOL, msg=f"2 ranks vs combined batch: {k}")
    beta = "/density/beta_param"
    assert (not torch.equal(a[beta], start[beta])) == (case == "triplane")   # trained in stage 1 only


def test_ddp_finds_unused_parameters_where_a_stage_leaves_the_sdf_values_out(data_root, tmp_path):
    """Weights with a stage whose loss has no term of the SDF's values (L_sn / L_eik alone
    leave the last layer's bias out on the autograd path) keep find_unused_parameters."""
    def uses(**changes):
        return IdentityTrainer(_cfg((5, 5, 5), 1, weights=LossWeights.thesis().replace(**changes)), data_root,
                               tmp_path / str(sorted(changes.items())))._uses_sdf_values()

    assert uses() and uses(ss=0.0) and uses(nsp=0.0, edr=0.0, nmr=0.0, g=0.0)
    assert not uses(ss=0.0, nsp=0.0)              # stage 3 drops L_edr (and the maps)
    assert not uses(ss=0.0, nsp=0.0, edr=0.0)     # stages 2-3
    assert IdentityTrainer(TrainConfig.preset("npm", progress=False), data_root, tmp_path / "npm")._uses_sdf_values()


def test_rank_split_pads_to_equal_steps(data_root, tmp_path):
    """Every rank takes as many steps as the others (else DDP would hang): the epoch's
    permutation is padded to a multiple of the world size, like DistributedSampler."""
    tr = IdentityTrainer(_cfg((0, 0, 5), 2), data_root, tmp_path)   # 2 items
    full = [i for b in tr._batches(0) for i in b]
    for world in (2, 3, 5):
        tr.world = world
        splits = []
        for rank in range(world):
            tr.rank = rank
            splits.append(tr._batches(0))
        assert len({len(s) for s in splits}) == 1 and len({tuple(map(len, s)) for s in splits}) == 1
        items = [i for s in splits for b in s for i in b]
        assert set(items) == set(full) and len(items) == world * (-(-len(full) // world))


def test_ddp_resume_bit_identical(data_root, tmp_path):
    """2 ranks interrupted after one step and resumed from rank 0's checkpoint (every rank
    loads it) take the same second step as an uninterrupted 2-rank run: identical models,
    optimiser states (codes, networks, D) and counters on both ranks."""
    cfg = _cfg((5, 5, 5), 1)
    straight, part = str(tmp_path / "straight"), str(tmp_path / "part")
    os.makedirs(straight)
    os.makedirs(part)
    a = _spawn(tmp_path, "a", data_root, straight, cfg, steps=2)
    first = _spawn(tmp_path, "b", data_root, part, cfg, steps=1)
    assert first[0]["global_step"] == 1
    resumed = _spawn(tmp_path, "c", data_root, part, cfg, steps=1, resume=True)
    for rank in range(2):
        want, got = _trained(a[rank]), _trained(resumed[rank])
        assert want.keys() == got.keys() and any(k.startswith("/disc/") for k in want)
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=f"rank {rank}: {k}")


def _signal_worker(rank, world, init, data_root, out, cfg_dict):
    """Rank 1 alone gets SIGTERM during its third step; rank 0 gets SIGINT during the final save."""
    import datetime
    import signal

    from npht.train.runlog import Stopped

    torch.set_num_threads(1)  # a rank left in a collective fails the test after 2 minutes instead of hanging
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    try:
        tr = IdentityTrainer(TrainConfig.from_dict(cfg_dict), data_root, out)
        step = tr.step

        def step_with_signal(batch):
            row = step(batch)
            if rank == 1 and tr.global_step == 3:
                signal.raise_signal(signal.SIGTERM)
            return row

        tr.step = step_with_signal
        if rank == 0:
            save = tr.save

            def save_after_own_signal():
                # rank 0's own (forwarded) signal comes late: after it learned of the stop from
                # rank 1, during its final save; it is no second signal, so no abort (before the
                # fix the handler was gone by then: a KeyboardInterrupt, rank 1 left in a collective)
                if tr.global_step == 3:
                    signal.raise_signal(signal.SIGINT)
                save()

            tr.save = save_after_own_signal
        handler = signal.getsignal(signal.SIGTERM)
        try:
            tr.train(max_steps=6)
            result = "finished"
        except Stopped as e:
            result = f"stopped {e.signum} {e}"
        assert signal.getsignal(signal.SIGTERM) is handler
        torch.save({"result": result, "global_step": tr.global_step}, os.path.join(out, f"signal{rank}.pt"))
        tr = step = save = None  # as the CLI does: the trainer (its DDP holds the process group) is
        gc.collect()      # freed, reference cycles too, before the group, or gloo's threads can
    finally:              # outlive it into the interpreter's exit and abort
        dist.destroy_process_group()


def test_ddp_signal_on_one_rank_stops_all_after_the_same_step(data_root, tmp_path):
    """A stop signal that reaches one rank only (torchrun forwards Ctrl-C to each worker at its
    own moment; a scheduler may signal a single process) stops every rank after the same step:
    the requests are all-reduced after each step, rank 0 saves, no rank hangs in a collective."""
    import signal

    from npht.train.checkpoint import load_checkpoint

    out = str(tmp_path / "sig")
    os.makedirs(out)
    init = "file://" + str(tmp_path / "rendezvous-signal")
    mp.spawn(_signal_worker, args=(2, init, data_root, out, _cfg((5, 5, 5), 1).to_dict()), nprocs=2, join=True)
    got = [torch.load(os.path.join(out, f"signal{r}.pt"), weights_only=False) for r in range(2)]
    for g in got:
        assert g["global_step"] == 3, g
        assert g["result"].startswith(f"stopped {int(signal.SIGTERM)} stopped at step 3 (SIGTERM)"), g["result"]
    assert load_checkpoint(os.path.join(out, "checkpoint.pt"))["global_step"] == 3


def _torchrun(args):
    """``torchrun --standalone --nproc_per_node 2 -m npht ARGS`` in its own session (as a
    terminal's foreground job: its workers run in sessions of their own)."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "npht", *args]
    return subprocess.Popen(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_torchrun_cli_trains_and_stops_on_ctrl_c(data_root, tmp_path):
    """`npht train identity` under torchrun (2 gloo ranks): rank 0 alone logs and saves; a
    Ctrl-C reaches torchrun, which forwards SIGINT to each worker: both stop after the same
    step, rank 0 saves it, and the run resumes from there."""
    import csv
    import re
    import signal

    from _procs import signal_when_saved

    from npht.train.checkpoint import load_checkpoint

    common = ["train", "identity", "--preset", "cpu-demo", "--data", data_root, "--no-progress", "--image-every", "0",
              "--device", "cpu"]  # gloo ranks (on a GPU machine too)
    out = tmp_path / "plain"
    p = _torchrun(common + ["--out", str(out), "--max-steps", "2"])
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert [int(r["step"]) for r in csv.DictReader(open(out / "log.csv"))] == [1, 2]  # one row per step
    assert load_checkpoint(str(out / "checkpoint.pt"))["global_step"] == 2

    out = tmp_path / "cut"
    p = _torchrun(common + ["--out", str(out), "--epochs", "0", "100", "100", "--ckpt-every", "1"])
    err = signal_when_saved(p, out / "checkpoint.pt", signal.SIGINT)  # to torchrun alone, as a terminal does
    stopped = re.findall(r"stopped at step (\d+) \(SIGINT\)", err)
    assert len(stopped) == 2 and stopped[0] == stopped[1], err
    saved = load_checkpoint(str(out / "checkpoint.pt"))["global_step"]
    assert saved == int(stopped[0]) >= 1
    assert int(list(csv.DictReader(open(out / "log.csv")))[-1]["step"]) == saved
    p = _torchrun(common + ["--out", str(out), "--resume", "--max-steps", "1"])
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert load_checkpoint(str(out / "checkpoint.pt"))["global_step"] == saved + 1


def _agree_worker(rank, world, init, out):
    """The stop agreement alone (no trainer): see the test below."""
    import datetime
    import signal
    import time

    from npht.train.runlog import _StopOnSignal

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    log = []
    reduce = dist.all_reduce
    try:
        # 1. rank 1's signal arrives while it waits in the collective: Python runs the handler
        #    right after the C call returns, before agreed() reads the result (raise_signal runs
        #    it at the same point). The collective said "go on", so both ranks go on, and both
        #    stop after the next step.
        with _StopOnSignal(world) as stop:
            def reduce_then_signal(*a, **k):
                r = reduce(*a, **k)
                if rank == 1:
                    signal.raise_signal(signal.SIGINT)
                return r

            dist.all_reduce = reduce_then_signal
            log.append(("late", stop.agreed(), stop.requested))
            dist.all_reduce = reduce
            log.append(("next", stop.agreed(), stop.signum))
        # 2. rank 0 asks (SIGTERM); rank 1 learns it from the collective, then its own SIGINT comes:
        #    the first this process received, so no abort; nor does a repeat right after it (a
        #    scheduler and torchrun both signalling); another one later aborts.
        with _StopOnSignal(world) as stop:
            if rank == 0:
                signal.raise_signal(signal.SIGTERM)
            log.append(("learned", stop.agreed(), stop.signum))
            if rank == 1:
                for what, wait in (("own after", 0.0), ("repeat", 0.0), ("later", stop.REPEAT_S + 0.2)):
                    time.sleep(wait)
                    try:
                        signal.raise_signal(signal.SIGINT)
                        log.append((what, stop.requested, stop.signum))
                    except KeyboardInterrupt:
                        log.append((what, "abort"))
        torch.save(log, os.path.join(out, f"agree{rank}.pt"))
    finally:
        dist.all_reduce = reduce
        dist.destroy_process_group()


def test_ddp_stop_agreement_is_the_collectives_answer(tmp_path):
    """Every rank takes the all-reduced answer, never its own flag read after the collective: a
    signal that came during the collective (its Python handler runs right after it) counts at
    the next step on all ranks. Before the fix, that rank stopped and the other took another
    step (seen as an intermittent torchrun hang: one rank in the final all-reduce, the other in
    the next step's DDP broadcast). A rank that learned of the stop takes its own forwarded
    signal as its first, not as the second that aborts; a repeat within REPEAT_S is the same
    request."""
    import signal

    init = "file://" + str(tmp_path / "rendezvous-agree")
    mp.spawn(_agree_worker, args=(2, init, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(os.path.join(tmp_path, f"agree{r}.pt"), weights_only=False) for r in range(2))
    sigint, sigterm = int(signal.SIGINT), int(signal.SIGTERM)
    assert r0 == [("late", False, False), ("next", True, sigint), ("learned", True, sigterm)]
    assert r1 == [("late", False, True), ("next", True, sigint), ("learned", True, sigterm),
                  ("own after", True, sigterm), ("repeat", True, sigterm), ("later", "abort")]
