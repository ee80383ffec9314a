"""The resume file: what saving it costs the thread that writes it."""

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from asl_sweep.training.checkpoint import ResumeState


class _Ops(TorchDispatchMode):
    """Every tensor operation run on this thread while it is on (torch's own dispatcher)."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_saving_a_resume_point_runs_no_tensor_operation_and_reads_back_whole(tmp_path):
    """Resume points are saved on the checkpoint writer's thread while training goes on.
    Saved through dataclasses.asdict, every tensor of the model and optimizer was
    deep-copied there (copy_, new_empty, set_), and with 2 CPU threads a CNN's every later
    epoch trained about 1.5x slower (benchmarks/resume_writes.py). The state is a snapshot
    already (resume_state): saving it is serialization only."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.rand(2, 4)).sum().backward()
    optimizer.step()
    state = ResumeState(identity={"trial": "7"}, model=model.state_dict(),
                        optimizer=optimizer.state_dict(), history=[{"epoch": 1.0}],
                        rng_torch=torch.get_rng_state(), rng_cuda=[],
                        generator=torch.Generator().manual_seed(1).get_state())
    with _Ops() as seen:
        state.save(tmp_path / "last.pt", sync=False)
    assert seen.ops == []
    back = ResumeState.load(tmp_path / "last.pt")
    assert back.identity == {"trial": "7"} and back.history == [{"epoch": 1.0}]
    torch.testing.assert_close(back.model, model.state_dict())
    torch.testing.assert_close(back.optimizer["state"], optimizer.state_dict()["state"])
    assert torch.equal(back.generator, state.generator)
