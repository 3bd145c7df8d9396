"""The run log's TensorBoard writer: closed (its pending scalars flushed) however training
ends, and idempotently. The tensorboard package is optional (not installed on the test
machine), so a stand-in ``torch.utils.tensorboard`` module records what the run log does:
like the real SummaryWriter, it keeps scalars pending until flush / close (the real one
writes every 2 minutes), so a writer never closed loses the last ones."""

import sys
import types

import pytest

from npht.train.config import TrainConfig
from npht.train.identity import IdentityTrainer
from npht.train.runlog import RunLog


class FakeWriter:
    opened = []

    def __init__(self, log_dir, purge_step=None):
        self.log_dir, self.purge_step = log_dir, purge_step
        self.pending, self.written, self.closed = [], [], 0
        FakeWriter.opened.append(self)

    def add_scalar(self, tag, value, step):
        assert not self.closed, "add_scalar on a closed writer"
        self.pending.append((tag, step))

    def flush(self):
        self.written += self.pending
        self.pending = []

    def close(self):
        self.flush()
        self.closed += 1


@pytest.fixture
def writers(monkeypatch):
    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    monkeypatch.setattr(FakeWriter, "opened", [])
    return FakeWriter.opened


def _cfg():
    return TrainConfig.preset("cpu-demo", progress=False, stage_epochs=(0, 5, 5), ckpt_every=0, image_every=0,
                              plane_resolution=16)


def _steps(writer):
    return sorted({step for tag, step in writer.written if tag == "loss/total"})


def test_writer_closed_when_training_ends(data_root, tmp_path, writers):
    tr = IdentityTrainer(_cfg(), data_root, tmp_path)
    tr.train(max_steps=2)
    assert len(writers) == 1 and writers[0].log_dir == str(tmp_path / "tb") and writers[0].purge_step is None
    assert writers[0].closed == 1 and writers[0].pending == [] and _steps(writers[0]) == [1, 2]
    tr.log.close()   # idempotent
    assert writers[0].closed == 1


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_writer_closed_when_training_raises(data_root, tmp_path, writers, error):
    """An exception in a step (or a KeyboardInterrupt not caught as a stop request) leaves
    the loop through its ``finally``: the steps logged before it are flushed."""
    tr = IdentityTrainer(_cfg(), data_root, tmp_path)
    step = tr.step

    def failing_step(batch):
        if tr.global_step == 2:
            raise error("step 3 failed")
        return step(batch)

    tr.step = failing_step
    with pytest.raises(error, match="step 3 failed"):
        tr.train(max_steps=5)
    assert len(writers) == 1 and writers[0].closed == 1 and _steps(writers[0]) == [1, 2]


def test_close_is_idempotent_and_a_later_write_opens_a_new_writer(tmp_path, writers):
    log = RunLog(str(tmp_path), ("step", "total"), ("total",))
    log.close()              # nothing opened: nothing to close
    assert writers == []
    log.rewind(4)            # a resumed run: its first writer purges the events after step 4
    log.write({"step": 5, "total": 1.0}, 5)
    log.close()
    log.close()
    assert len(writers) == 1 and writers[0].purge_step == 5 and writers[0].closed == 1
    assert writers[0].written == [("loss/total", 5)]
    with log:                # another train() call: a new writer, which purges nothing of this run's
        log.write({"step": 6, "total": 0.5}, 6)
    assert len(writers) == 2 and writers[1].purge_step is None and writers[1].closed == 1
    assert writers[1].written == [("loss/total", 6)] and writers[0].closed == 1


def test_without_tensorboard_close_does_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)   # import fails
    log = RunLog(str(tmp_path), ("step", "total"), ("total",))
    log.write({"step": 1, "total": 1.0}, 1)
    assert log.tensorboard() is None
    log.close()
    log.close()
    assert log.tensorboard() is None and log._tb is False   # the import is not retried
    assert (tmp_path / "log.csv").read_text().splitlines() == ["step,total", "1,1.0"]
