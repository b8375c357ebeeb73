"""The job configuration: one pydantic model, validated at the edge (CLI, REST); unknown keys are errors.

Load a file with `load_config(path_or_preset, overrides)`; overrides are `dotted.key=value` strings whose
value is parsed as YAML (so `model.hidden=[3000]` works).
"""
from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PRESETS_PACKAGE = "coordinator.presets"


class _Strict(BaseModel):
    # strict: no "2" or true taken for a number (an int still fills a float field), no 1 taken for true
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, strict=True)


# "package.module:function", the form of model.factory and data.factory (checked before anything is imported)
FACTORY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
Factory = Annotated[str, Field(max_length=256, pattern=FACTORY_PATTERN)]


class DataConfig(_Strict):
    dataset: Literal["mnist", "digits", "synthetic", "npz", "factory"] = "digits"
    # mnist: folder with the four MNIST IDX files (.gz or raw), None: $HES_MNIST_DIR. npz: the .npz file.
    path: str | None = None
    # Held out from the training images as dev. None: 10,000 for mnist (the paper), 20% otherwise
    # (npz and factory: only when they bring no x_dev, y_dev of their own).
    dev_size: Annotated[int, Field(ge=1)] | None = None
    # factory: "package.module:function" called with `kwargs`; it returns the arrays an .npz would hold.
    factory: Factory | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    # How the training set is placed on the workers. iid: every round's minibatch is split among the workers.
    # dirichlet: each worker slot owns a fixed partition whose label proportions come from Dirichlet(alpha)
    # (seeded by the job seed) and takes its share of every round's examples from it (workers/partition.py).
    split: Literal["iid", "dirichlet"] = "iid"
    alpha: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1.0  # dirichlet only: lower is more skewed
    # Keep only these labels in train, dev and test (their values unchanged; the model keeps its 10 outputs).
    # None: every class.
    classes: list[Annotated[int, Field(ge=0, le=9)]] | None = Field(default=None, min_length=1, max_length=10)

    @model_validator(mode="after")
    def _path_and_factory(self) -> DataConfig:
        if self.path is not None and self.dataset not in ("mnist", "npz"):
            raise ValueError(f"data.path is only read for datasets 'mnist' and 'npz', not {self.dataset!r}")
        if self.dataset == "npz" and self.path is None:
            raise ValueError("data.path: dataset 'npz' needs the path of a .npz file")
        if (self.factory is None) == (self.dataset == "factory"):
            raise ValueError("data.factory: set it for dataset 'factory' (\"package.module:function\"), and only then")
        if self.kwargs and self.dataset != "factory":
            raise ValueError("data.kwargs: only passed to a data.factory")
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            raise ValueError(f"data.classes: {self.classes} names a label twice")
        return self


class ModelConfig(_Strict):
    arch: Literal["mlp", "convnet", "module"] = "mlp"
    hidden: list[Annotated[int, Field(ge=1, le=65536)]] = Field(default_factory=lambda: [300], min_length=1,
                                                                max_length=16)
    activation: Literal["sigmoid", "tanh", "relu"] = "sigmoid"
    # Initial weights: "normal" draws N(0, 1) as the paper's MLP did; "fan_in" scales by 1/sqrt(fan_in).
    # None: normal for mlp, fan_in for convnet.
    init: Literal["normal", "fan_in"] | None = None
    # arch module: "package.module:function" returning a torch.nn.Module, called with `kwargs` (workers/module_model.py)
    factory: Factory | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    # What the trials perturb (and L2 decays): weights, every parameter of 2 or more dimensions; all, every one.
    perturb: Literal["weights", "all"] = "weights"

    # A finished job's output folder: start from its model.safetensors instead of the seed's parameters (the
    # architecture must match, tensor by tensor). None: the seed's initial parameters.
    init_from: Annotated[str, Field(min_length=1)] | None = None
    # all: every parameter trains. last: only the last layer's weights and biases change; every update of every
    # mode (full, stochastic, localsgd) and every trial's perturbation leaves the others bitwise as they were.
    trainable: Literal["all", "last"] = "all"

    @model_validator(mode="after")
    def _factory_only_for_module(self) -> ModelConfig:
        if (self.factory is None) == (self.arch == "module"):
            raise ValueError("model.factory: set it for arch 'module' (\"package.module:function\"), and only then")
        if self.arch != "module" and (self.kwargs or self.perturb != "weights"):
            raise ValueError("model.kwargs, model.perturb: only for arch 'module'")
        if self.arch == "module" and self.trainable == "last":  # its parameter order says not which layer is last
            raise ValueError("model.trainable: 'last' is for the built-in mlp and convnet, not arch 'module'")
        return self


class TrainConfig(_Strict):
    epochs: Annotated[int, Field(ge=1, le=100000)] = 30
    batch_size: Annotated[int, Field(ge=1)] = 1000
    lr: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 5.0  # applied to the batch-mean gradient
    l2: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1.0e-4  # W -= 2 * lr * l2 * W (weights only)
    # Reshuffle the training set every epoch (seeded), as most SGD training does. False: the same batch order
    # every epoch, as the paper's runs had it; with r = 2 the odd batches then never get a gradient of their
    # own, only trials scored on them, and on MNIST a 2-worker r = 2 job in that order collapsed to 39% dev
    # accuracy in its last epochs (BENCHMARKS.md, section 7 has five seeds of both orders).
    shuffle: bool = True
    # Write checkpoint.npz every this-many rounds as well as at every epoch end; None: at epoch ends only.
    # A job restarted from a checkpoint recomputes the rounds after it, bitwise as they were (seeded rounds).
    checkpoint_every: Annotated[int, Field(ge=1)] | None = None
    # cross_entropy: class labels (N) against logits (N, C), or (N, T) against (N, T, C), mean over T per example;
    # mse: float targets of the output's shape, mean over an example's entries. Accuracy only for cross_entropy.
    loss: Literal["cross_entropy", "mse"] = "cross_entropy"


class HybridConfig(_Strict):
    # zo: every round stochastic, no backprop anywhere (forward-only workers); its step is the es estimate alone.
    mode: Literal["hybrid", "backprop", "stale", "localsgd", "zo"] = "hybrid"
    r: Annotated[int, Field(ge=1, le=100000)] = 2  # full round when iteration % r == 0
    k: Annotated[int, Field(ge=1, le=100000)] = 10  # trials per worker per stochastic round
    # Std of the shift added to the batch-SUMMED gradient (the paper's "sigma^2", see seed/NOTES.md).
    sigma: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1.25
    # argmin: Algorithm 2 as written (apply the best trial). notebook: the paper's code (seed/NOTES.md).
    # elitist: (1 + lambda) selection, apply the best trial only if it beats the current cost, else keep.
    # es: antithetic pairs (k / 2 seeds, each tried as +E and -E), every cost weighted (es_weights), the step
    # moved by es_lr times the weighted sum of the perturbations (coordinator/combine.py, workers/search.py).
    # guided: es whose perturbations lie in the span of the last guided_m full-round gradients plus an
    # isotropic part of weight guided_alpha (Guided ES, Maheswaranathan et al. 2019).
    combine: Literal["argmin", "notebook", "elitist", "es", "guided"] = "argmin"
    # independent: every worker tries seeds of its own on the whole minibatch. shared: the round's seeds come
    # from the round alone, every worker scores all of them on its shard, the coordinator adds the costs up.
    trials: Literal["independent", "shared"] = "independent"
    # es and guided: the step is -es_lr * (lr * sigma / B) * sum_i w_i E_i / n over the n seeds of the round,
    # w_i in [-1, 1] (rank weights); es_lr = 1 moves about as far as one trial's shift along the best direction.
    es_lr: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1.0
    # rank: centered ranks of all the round's costs (OpenAI ES; blind to the costs' scale, robust to outliers);
    # zscore: (cost - mean) / (2 std), which keeps how much better a trial was. quadratic (guided only): fit a
    # quadratic model of the cost in the gradients' span to every cost and step to its minimizer, at most es_lr
    # times the farthest trial away (a trust region); the weights then make the step exactly that.
    es_weights: Literal["rank", "zscore", "quadratic"] = "rank"
    guided_m: Annotated[int, Field(ge=1, le=64)] = 2  # full-round gradients kept for guided trials
    guided_alpha: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 0.5  # isotropic share of a trial
    # Every this-many rounds each worker reports a digest of its parameters; 0 turns the check off.
    replica_check_every: Annotated[int, Field(ge=0)] = 10
    # A trial's perturbation of the weights: gaussian (every weight its own N(0, 1) draw) or lowrank (per weight
    # matrix E = A B^T / sqrt(noise_rank), A and B N(0, 1), so every entry has unit variance; workers/noise.py).
    noise: Literal["gaussian", "lowrank"] = "gaussian"
    noise_rank: Annotated[int, Field(ge=1, le=4096)] = 1  # rank of lowrank perturbations
    # One more backprop per stochastic round, in the coordinator: the cosine between the applied step and the
    # minibatch's true descent direction, and the share of trials that beat the unperturbed step, as per-epoch
    # history columns diag_cosine and diag_beat_share. Off: nothing is computed.
    diagnostics: bool = False


    @model_validator(mode="after")
    def _rules_fit(self) -> HybridConfig:
        if self.combine in ("es", "guided") and self.k % 2:
            raise ValueError(f"hybrid.k: combine {self.combine!r} tries k / 2 seeds as antithetic pairs (+E, -E), "
                             f"so k must be even, got {self.k}")
        if self.es_weights == "quadratic" and self.combine != "guided":
            raise ValueError(f"hybrid.es_weights: 'quadratic' fits a model in the gradients' span, so it needs "
                             f"combine 'guided', got {self.combine!r}")
        if self.mode == "zo" and self.combine != "es":
            raise ValueError(f"hybrid.combine: mode 'zo' steps by the es estimate, so it needs combine 'es', "
                             f"got {self.combine!r}")
        if (self.combine in ("es", "guided") or self.trials == "shared") and self.k > 65535:
            raise ValueError(f"hybrid.k: every trial's cost travels, and a result holds at most 65535 of them, "
                             f"got {self.k}")
        if self.trials == "shared" and self.combine in ("notebook", "elitist"):
            raise ValueError(f"hybrid.trials: 'shared' works with combine argmin, es or guided, not {self.combine!r}")
        return self


class ClusterConfig(_Strict):
    workers: Annotated[int, Field(ge=0, le=1024)] = 2  # 0: run in this process, no Ray
    cpus_per_worker: Annotated[float, Field(gt=0, le=1024)] = 1
    gpus_per_worker: Annotated[float, Field(ge=0, le=64)] = 0
    address: str | None = None  # Ray address; None starts or joins a local Ray
    # Passed to Ray for the job's actors (coordinator and workers), e.g. {py_modules: [./mypkg]} or {working_dir: .}
    # so that model.factory and data.factory import on every node; local paths are uploaded by the driver.
    runtime_env: dict[str, Any] | None = None
    # ray: each worker is a Ray actor. local: the `workers` replicas run in this process one after another, each
    # applying every decision itself as an actor does, so the job ends bitwise equal to the Ray job of the same
    # config, with the same payload bytes counted (coordinator/pool.py ReplicaPool).
    backend: Literal["ray", "local"] = "ray"

    @model_validator(mode="after")
    def _local_backend(self) -> ClusterConfig:
        if self.backend == "local" and self.gpus_per_worker:
            raise ValueError("cluster.gpus_per_worker: the local backend computes on this process's CPU")
        if self.backend == "local" and self.address is not None:
            raise ValueError("cluster.address: the local backend runs no Ray; leave the address unset")
        if self.backend == "local" and self.runtime_env is not None:
            raise ValueError("cluster.runtime_env: the local backend runs no Ray; the factories import in this process")
        return self


class ObjectiveConfig(_Strict):
    """A black-box objective (workers/blackbox.py): the job trains a policy by its episode returns, no data set."""
    factory: Factory = Field(description='"package.module:function" called with `kwargs`; it returns '
                             "run(policy, seed) -> float, the return of one episode (higher is better)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of objective.factory")
    episodes: Annotated[int, Field(ge=1, le=10000)] = Field(
        1, description="episodes per trial; a trial's score is their mean return")
    inputs: Annotated[int, Field(ge=1, le=65536)] | None = Field(
        None, description="the built-in mlp policy's input size (the observation's length); None with model.arch "
                          "module")
    outputs: Annotated[int, Field(ge=1, le=65536)] | None = Field(
        None, description="the built-in mlp policy's output size (e.g. one score per discrete action); None with "
                          "model.arch module")
    rounds_per_epoch: Annotated[int, Field(ge=1, le=100000)] = Field(
        10, description="rounds between two evaluations (a row of history.csv, a checkpoint); train.epochs of them")
    eval_episodes: Annotated[int, Field(ge=1, le=10000)] = Field(
        10, description="the fixed evaluation episodes (seeded by the job seed alone) of final.return and every "
                        "epoch's return_mean, return_std")
    normalize: bool = Field(
        False, description="feed the policy (obs - mean) / std, clipped to 5, from the running statistics of every "
                           "observation the trials saw; they travel as 1 + 2 x inputs float32 per worker per round, "
                           "each way (built-in mlp only)")
    target_return: Annotated[float, Field(allow_inf_nan=False)] | None = Field(
        None, description="end the job SUCCEEDED at the first epoch whose evaluation return reaches it; None: "
                          "train every epoch")


class JobConfig(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")] = "job"
    seed: Annotated[int, Field(ge=0, lt=2**31)] = 100
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    hybrid: HybridConfig = Field(default_factory=HybridConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    objective: ObjectiveConfig | None = Field(
        None, description="a black-box objective instead of a data set (hybrid.mode zo, combine es); None: data")

    @model_validator(mode="after")
    def _quadratic_is_determined(self) -> JobConfig:
        # the quadratic fit in the span of m gradients has 1 + m + m (m + 1) / 2 unknowns, one cost per trial
        h = self.hybrid
        if h.es_weights == "quadratic":
            costs = h.k if h.trials == "shared" else h.k * max(1, self.cluster.workers)
            unknowns = 1 + h.guided_m + h.guided_m * (h.guided_m + 1) // 2
            if costs < unknowns:
                raise ValueError(f"hybrid.es_weights: quadratic fits {unknowns} numbers in the span of guided_m = "
                                 f"{h.guided_m} gradients, and a round gives {costs} costs; raise hybrid.k or "
                                 "lower hybrid.guided_m")
        return self

    @model_validator(mode="after")
    def _objective_fits(self) -> JobConfig:
        o, h, m = self.objective, self.hybrid, self.model
        if o is None:
            return self
        if h.mode != "zo":
            raise ValueError(f"hybrid.mode: a black-box objective (objective.factory) has no gradient, so it trains "
                             f"with mode 'zo' (combine 'es'), not {h.mode!r}")
        if h.trials != "independent" or h.diagnostics:
            raise ValueError("hybrid.trials, hybrid.diagnostics: a black-box objective trains with independent "
                             "trials and no diagnostics (they score a data set)")
        if self.data != DataConfig():  # a dumped config holds the default section: only a changed one is refused
            raise ValueError("data: a black-box objective (objective.factory) reads no data set; remove the section")
        if m.arch == "convnet":
            raise ValueError("model.arch: a policy is the built-in mlp or your module (arch module), not convnet")
        if (m.arch == "mlp") != (o.inputs is not None and o.outputs is not None):
            raise ValueError("objective.inputs, objective.outputs: set both for the built-in mlp policy (its input "
                             "and output sizes), and neither for model.arch module")
        if o.normalize and m.arch != "mlp":
            raise ValueError("objective.normalize: for the built-in mlp policy, whose objective.inputs say the "
                             "observation's length")
        if self.model.init_from is not None or self.model.trainable != "all":
            raise ValueError("model.init_from, model.trainable: not for a black-box objective")
        return self

    @model_validator(mode="after")
    def _trainable_fits_the_rule(self) -> JobConfig:
        # the es and guided trials (workers/search.py) perturb every weight: they do not keep a frozen part
        searches = self.hybrid.mode == "zo" or (self.hybrid.mode == "hybrid" and (
            self.hybrid.combine in ("es", "guided") or self.hybrid.trials == "shared"))
        if self.model.trainable == "last" and searches:
            raise ValueError("model.trainable: 'last' works with the argmin, notebook and elitist trials and the "
                             "backprop, stale and localsgd modes, not with hybrid.combine es or guided, "
                             "hybrid.trials shared or hybrid.mode zo")
        return self


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the field."""


def format_validation_error(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "config"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def validate_config(raw: dict[str, Any]) -> JobConfig:
    """Build a JobConfig or raise ConfigError naming every bad field."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a mapping, got {type(raw).__name__}")
    try:
        return JobConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


class _YamlLoader(yaml.SafeLoader):
    """YAML 1.1 as PyYAML reads it, but `1e-4` and `1.0e4` are floats (YAML 1.1 wants a dot and a signed
    exponent, so PyYAML leaves them strings, which the strict float fields would refuse)."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_YamlLoader)  # a SafeLoader: no Python objects


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(PRESETS_PACKAGE).iterdir() if p.name.endswith(".yaml"))


def read_config_file(path_or_preset: str) -> dict[str, Any]:
    """A config as a dict: a YAML/JSON file, or the name of a shipped preset (see `hes presets`)."""
    p = Path(path_or_preset)
    if p.is_file():
        text = p.read_text()
        source = str(p)
    elif path_or_preset in preset_names():
        text = resources.files(PRESETS_PACKAGE).joinpath(f"{path_or_preset}.yaml").read_text()
        source = f"preset {path_or_preset}"
    else:
        raise ConfigError(f"config: {path_or_preset!r} is neither a file nor a preset ({', '.join(preset_names())})")
    try:
        raw = json.loads(text) if p.suffix == ".json" else _load_yaml(text)
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise ConfigError(f"config: {source} does not parse: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config: {source} must hold a mapping at the top level")
    return raw


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Set `dotted.key=value` in raw (value parsed as YAML). Unknown keys surface at validation."""
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment!r}: expected dotted.key=value")
    try:
        value = _load_yaml(text) if text.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {key}: value does not parse as YAML: {err}") from None
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def load_config(path_or_preset: str | None, overrides: list[str] | tuple[str, ...] = ()) -> JobConfig:
    raw = read_config_file(path_or_preset) if path_or_preset else {}
    for assignment in overrides:
        apply_override(raw, assignment)
    return validate_config(raw)
