"""`jaxmodels plan`: per-device bytes follow the shardings; over budget is a one-line error
naming the dominant term and its knob."""

import pytest

from jaxmodels import cli
from jaxmodels.errors import UserError
from jaxmodels.training import plan as plan_lib

MLP = ["experiments/configs/mlp_mnist.py", "--tiny", "data.dataset=digits", "data.batch_size=16"]


def test_parse_bytes():
    assert plan_lib.parse_bytes("16GiB") == 16 * 2 ** 30
    assert plan_lib.parse_bytes("80GB") == 80 * 10 ** 9
    assert plan_lib.parse_bytes("512 MiB") == 512 * 2 ** 20
    with pytest.raises(UserError, match="not a size"):
        plan_lib.parse_bytes("lots")


def test_budget_names_the_dominant_term_and_its_knob():
    heavy_params = plan_lib.Plan({"data": 8, "fsdp": 1, "tensor": 1}, params=10 ** 9,
                                 opt_state=2 * 10 ** 9, grads=10 ** 9, activations=10 ** 6, xla=None)
    with pytest.raises(UserError, match="largest term is optimizer state: try parallel.preset=fsdp"):
        plan_lib.check_budget(heavy_params, 2 ** 30)
    plan_lib.check_budget(heavy_params, 2 ** 40)  # fits: no error
    heavy_acts = plan_lib.Plan({"data": 8, "fsdp": 1, "tensor": 1}, params=10, opt_state=20,
                               grads=10, activations=10 ** 9, xla=None)
    with pytest.raises(UserError, match="activations: try model.remat=true"):
        plan_lib.check_budget(heavy_acts, 2 ** 20)


def test_plan_shards_with_fsdp_and_reads_xla_memory_analysis(capsys):
    data = plan_lib.plan(cli.config_lib.apply_overrides(cli.config_lib.load(MLP[0], tiny=True),
                                                       MLP[2:]), compile_step=True)
    fsdp = plan_lib.plan(cli.config_lib.apply_overrides(cli.config_lib.load(MLP[0], tiny=True),
                                                       MLP[2:] + ["parallel.preset=fsdp"]),
                         compile_step=False)
    assert fsdp.params < data.params / 4 and fsdp.opt_state < data.opt_state / 4
    # Where each parameter goes: replicated under data, the kernels split over fsdp under fsdp.
    assert set(data.param_specs) == set(fsdp.param_specs) and len(data.param_specs) >= 4
    assert all(tuple(spec) == () for _, spec in data.param_specs.values())
    kernels = {name: spec for name, (shape, spec) in fsdp.param_specs.items() if name.endswith("kernel")}
    assert kernels and all("fsdp" in tuple(spec) for spec in kernels.values()), kernels
    assert data.activations > 0
    assert data.xla is not None and data.xla_total > 0
    assert cli.main(["plan", *MLP, "--no-compile", "--device-memory", "1KiB"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "over the 1.00 KiB budget" in err[0]
