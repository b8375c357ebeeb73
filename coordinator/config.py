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
    """Which data set the job trains on, and how its training set is placed on the workers."""

    dataset: Literal["mnist", "digits", "synthetic", "npz", "factory"] = Field(default="digits", description=(
        "The data set. `mnist`: the four MNIST IDX files in `data.path` (28x28 images). `digits`: scikit-learn's "
        "bundled 8x8 digits, nothing to download. `synthetic`: ten classes of noisy 16x16 prototype images, made "
        "from the seed. `npz`: your own arrays in the .npz file at `data.path` (`x_train`, `y_train`, `x_test`, "
        "`y_test`, optionally `x_dev`, `y_dev`). `factory`: your own arrays, returned by `data.factory`. The "
        "built-in image sets are standardised with the training set's mean and std; your own arrays are used "
        "as given."))
    path: str | None = Field(default=None, description=(
        "`mnist`: the folder with the four MNIST IDX files (.gz or raw); null reads `$HES_MNIST_DIR`. `npz`: the "
        ".npz file (required). The other data sets read no path. Through the service it must lie inside "
        "`HES_ALLOWED_DATA_ROOTS`."))
    dev_size: Annotated[int, Field(ge=1)] | None = Field(default=None, description=(
        "Examples held out from the training images as the dev set (seeded). null: 10,000 for mnist, as the "
        "paper did, and 20% of the training set otherwise; npz and factory hold out only when they bring no "
        "`x_dev`, `y_dev` of their own."))
    factory: Factory | None = Field(default=None, description=(
        "Dataset `factory` only, and required there: `\"package.module:function\"`, called with `data.kwargs`; "
        "it returns a mapping of the arrays an .npz would hold. Through the service the module must lie inside "
        "`HES_ALLOWED_FACTORIES`."))
    kwargs: dict[str, Any] = Field(default_factory=dict, description=(
        "Dataset `factory` only: keyword arguments passed to `data.factory` (plain YAML data)."))
    split: Literal["iid", "dirichlet"] = Field(default="iid", description=(
        "How the training set is placed on the workers. `iid`: every round's minibatch is split evenly among the "
        "workers. `dirichlet`: each worker slot owns a fixed partition whose label proportions are drawn from "
        "Dirichlet(`data.alpha`), seeded by the job's seed, and takes its share of every round's examples from "
        "it (non-IID workers; workers/partition.py)."))
    alpha: Annotated[float, Field(gt=0, allow_inf_nan=False)] = Field(default=1.0, description=(
        "Split `dirichlet` only: the concentration of each worker's label proportions; lower gives each worker "
        "fewer dominant labels."))
    classes: list[Annotated[int, Field(ge=0, le=9)]] | None = Field(default=None, min_length=1, max_length=10,
                                                                    description=(
        "Keep only these labels in train, dev and test, their values unchanged (the model keeps its 10 outputs, "
        "so a later job can fine-tune it on every class). null: every class."))

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
    """The network: one of the paper's two, or a torch.nn.Module of your own; where it starts and what trains."""

    arch: Literal["mlp", "convnet", "module"] = Field(default="mlp", description=(
        "`mlp`: fully connected layers of `model.hidden` units, then 10 outputs (the paper's MNIST network is "
        "784-300-10 with sigmoid). `convnet`: the paper's LeNet-like net, conv 5x5 x6, 2x2 pool, conv 5x5 x16, "
        "2x2 pool, 120, 84, 10 (images of 16x16 pixels or more). `module`: your own torch.nn.Module, built by "
        "`model.factory`."))
    hidden: list[Annotated[int, Field(ge=1, le=65536)]] = Field(default_factory=lambda: [300], min_length=1,
                                                                max_length=16, description=(
        "`mlp`: the units of each hidden layer, e.g. `[300]` or `[512, 256]`."))
    activation: Literal["sigmoid", "tanh", "relu"] = Field(default="sigmoid", description=(
        "`mlp` and `convnet`: the activation after every layer but the last."))
    init: Literal["normal", "fan_in"] | None = Field(default=None, description=(
        "Initial weights (biases start at zero). `normal`: N(0, 1) draws, as the paper's MLP had; `fan_in`: "
        "N(0, 1) scaled by 1/sqrt(fan_in). null: normal for mlp, fan_in for convnet."))
    factory: Factory | None = Field(default=None, description=(
        "Arch `module` only, and required there: `\"package.module:function\"` returning a torch.nn.Module, "
        "called with `model.kwargs` under the job's seed (workers/module_model.py). BatchNorm is refused; use "
        "GroupNorm or LayerNorm. Through the service the module must lie inside `HES_ALLOWED_FACTORIES`."))
    kwargs: dict[str, Any] = Field(default_factory=dict, description=(
        "Arch `module` only: keyword arguments passed to `model.factory` (plain YAML data)."))
    perturb: Literal["weights", "all"] = Field(default="weights", description=(
        "Arch `module` only: what the trials perturb and L2 decays. `weights`: every parameter of 2 or more "
        "dimensions; `all`: every parameter."))
    init_from: Annotated[str, Field(min_length=1)] | None = Field(default=None, description=(
        "A finished job's output folder: start from its model.safetensors instead of the seed's parameters; the "
        "architecture must match, tensor by tensor. Through the service: a job id, or a folder inside its job "
        "outputs or data roots. null: the seed's initial parameters."))
    trainable: Literal["all", "last"] = Field(default="all", description=(
        "`all`: every parameter trains. `last`: only the last layer's weights and biases change; every update of "
        "every mode, and every trial's perturbation, leaves the others bitwise as they were. mlp and convnet "
        "only, and not with `hybrid.combine` es or guided, `hybrid.trials` shared or `hybrid.mode` zo."))

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
    """The optimisation: epochs, minibatch, learning rate, weight decay, loss and checkpoints."""

    epochs: Annotated[int, Field(ge=1, le=100000)] = Field(default=30, description=(
        "Passes over the training set. An epoch has training examples // `train.batch_size` minibatches (the "
        "remainder is left out of that epoch), one round each (two with mode hybrid and r = 1)."))
    batch_size: Annotated[int, Field(ge=1)] = Field(default=1000, description=(
        "Examples per round, over all workers together: each worker takes its share of the minibatch."))
    lr: Annotated[float, Field(gt=0, allow_inf_nan=False)] = Field(default=5.0, description=(
        "Learning rate, applied to the batch-mean gradient: a full round steps by -lr * g. A trial's shift is "
        "scaled by it too (see `hybrid.sigma`). A job whose loss becomes nan or inf fails naming `train.lr` "
        "and `hybrid.sigma`."))
    l2: Annotated[float, Field(ge=0, allow_inf_nan=False)] = Field(default=1.0e-4, description=(
        "L2 weight decay, on the weights only (not biases): every step also does W -= 2 * lr * l2 * W, as the "
        "paper's code did."))
    shuffle: bool = Field(default=True, description=(
        "Reshuffle the training set every epoch (seeded), as most SGD training does. false: the same minibatch "
        "order every epoch, as the paper's runs had it; with hybrid.r = 2 the odd minibatches then never get a "
        "gradient of their own, only trials scored on them, which can make training unstable (BENCHMARKS.md, "
        "section 7, compares both orders over five seeds)."))
    checkpoint_every: Annotated[int, Field(ge=1)] | None = Field(default=None, description=(
        "Write checkpoint.npz every this many rounds as well as at every epoch end; null: at epoch ends only. A "
        "job restarted from a checkpoint recomputes the rounds after it, bitwise as they were, so this bounds the "
        "work a restart repeats."))
    loss: Literal["cross_entropy", "mse"] = Field(default="cross_entropy", description=(
        "`cross_entropy`: class labels (N) against logits (N, C), or (N, T) against (N, T, C) with an example's "
        "loss the mean over its T positions. `mse`: float targets of the output's shape, the mean over an "
        "example's entries; a job then reports loss only, no accuracy."))


class HybridConfig(_Strict):
    """The method: which rounds compute a backprop gradient, and how the seed-only rounds search and step."""

    mode: Literal["hybrid", "backprop", "stale", "localsgd", "zo"] = Field(default="hybrid", description=(
        "`hybrid`: Hybrid-ES, every `hybrid.r`-th round full (backprop), the others stochastic (seeded trials). "
        "`backprop`: every round full, the reference. `stale`: the control, the other rounds re-apply the last "
        "backprop gradient with no search. `localsgd`: the peer, each worker steps on its own shard and the "
        "parameters are averaged every `hybrid.r` rounds. `zo`: every round stochastic, no backprop anywhere "
        "(forward-only workers), the step the es estimate alone; needs `hybrid.combine` es."))
    r: Annotated[int, Field(ge=1, le=100000)] = Field(default=2, description=(
        "The period of full rounds: round t (counted over the whole job from 0) is full when t % r == 0, so "
        "1/r of the rounds compute a backprop gradient. r = 1 is the paper's Assisted H-ES: every minibatch gets "
        "a full round that only sets the gradient, then a stochastic round whose trials take the step. "
        "localsgd: the parameters are averaged after every r-th local step."))
    k: Annotated[int, Field(ge=1, le=100000)] = Field(default=10, description=(
        "Trials per worker per stochastic round (K in the paper): seeded perturbations of the last backprop "
        "gradient, each scored by its loss on the round's minibatch. With `hybrid.trials` shared, the k seeds of "
        "the round that every worker scores. es and guided try k / 2 seeds as antithetic pairs, so k must be "
        "even."))
    sigma: Annotated[float, Field(ge=0, allow_inf_nan=False)] = Field(default=1.25, description=(
        "The size of a trial's shift: the standard deviation of the N(0, 1) noise added to the batch-SUMMED "
        "gradient, so a trial moves each weight by lr * sigma / batch_size standard deviations (the paper's "
        "\"sigma^2\" is this number)."))
    combine: Literal["argmin", "notebook", "elitist", "es", "guided"] = Field(default="argmin", description=(
        "How a stochastic round's trials become its step. `argmin`: apply the best trial (the paper's Algorithm "
        "2 as written). `notebook`: the paper's published code, re-apply the last gradient if any trial beat "
        "the current cost, else move only the biases. `elitist`: (1 + lambda) selection, apply the best trial "
        "only if it beats the current cost, else keep the parameters. `es`: antithetic pairs (k / 2 seeds, each "
        "tried as +E and -E), every cost weighted (`hybrid.es_weights`), the step `hybrid.es_lr` times the "
        "weighted sum of the perturbations. `guided`: es whose perturbations lie in the span of the last "
        "`hybrid.guided_m` full-round gradients plus an isotropic part (Guided ES, Maheswaranathan et al. 2019)."))
    trials: Literal["independent", "shared"] = Field(default="independent", description=(
        "`independent`: every worker tries seeds of its own on the whole minibatch (on its own partition's share "
        "under data.split dirichlet). `shared`: the round's seeds come from the round alone, every worker scores "
        "all k of them on its shard, and the coordinator adds the costs up weighted by examples. shared works "
        "with combine argmin, es and guided."))
    es_lr: Annotated[float, Field(ge=0, allow_inf_nan=False)] = Field(default=1.0, description=(
        "es and guided: the step is -es_lr * (lr * sigma / B) * sum_i w_i E_i / n over the n seeds of the round, "
        "w_i in [-1, 1]; es_lr = 1 moves about as far as one trial's shift along the best direction. With "
        "es_weights quadratic: the trust radius, in units of the farthest trial."))
    es_weights: Literal["rank", "zscore", "quadratic"] = Field(default="rank", description=(
        "es and guided: how costs become weights. `rank`: centered ranks of all the round's costs (OpenAI ES; "
        "blind to the costs' scale, robust to outliers). `zscore`: (cost - mean) / (2 std), which keeps how much "
        "better a trial was. `quadratic` (guided only): fit a quadratic model of the cost in the gradients' span "
        "to every cost and step to its minimizer, within the trust radius `hybrid.es_lr`; a round must give at "
        "least as many costs as the model has numbers."))
    guided_m: Annotated[int, Field(ge=1, le=64)] = Field(default=2, description=(
        "guided: how many of the last full-round gradients span the trials' directions (kept in checkpoints)."))
    guided_alpha: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = Field(default=0.5, description=(
        "guided: the isotropic share of a trial's perturbation; 0 keeps it inside the gradients' span, 1 makes "
        "it plain es."))
    replica_check_every: Annotated[int, Field(ge=0)] = Field(default=10, description=(
        "Every this many rounds each worker reports an 8-byte digest of its parameters; a worker whose copy "
        "differs from the coordinator's is resynced (counted as sync bytes). 0 turns the check off."))
    noise: Literal["gaussian", "lowrank"] = Field(default="gaussian", description=(
        "A trial's perturbation of the weights. `gaussian`: every weight its own N(0, 1) draw. `lowrank`: per "
        "weight matrix (a conv kernel as out x in*kh*kw) E = A B^T / sqrt(noise_rank), A and B N(0, 1), so "
        "every entry has unit variance and a trial draws far fewer numbers (workers/noise.py)."))
    noise_rank: Annotated[int, Field(ge=1, le=4096)] = Field(default=1, description=(
        "`lowrank` only: the rank of the perturbations."))
    diagnostics: bool = Field(default=False, description=(
        "One more backprop per stochastic round, in the coordinator, to measure the method: the cosine between "
        "the applied step and the minibatch's true descent direction, and the share of trials that beat the "
        "unperturbed step, as history.csv columns `diag_cosine` and `diag_beat_share`. false: nothing is "
        "computed."))

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
    """Where the job runs: how many workers, what each reserves, which Ray, and what code travels with it."""

    workers: Annotated[int, Field(ge=0, le=1024)] = Field(default=2, description=(
        "Worker replicas; each takes its share of every minibatch. 0: the whole job in this process, no Ray "
        "(for debugging; `hes train` only)."))
    cpus_per_worker: Annotated[float, Field(gt=0, le=1024)] = Field(default=1, description=(
        "CPUs Ray reserves for each worker (torch uses that many threads, at least 1). A job needs workers x "
        "cpus_per_worker CPUs free on the cluster; the service refuses one that cannot fit."))
    gpus_per_worker: Annotated[float, Field(ge=0, le=64)] = Field(default=0, description=(
        "GPUs Ray reserves for each worker; a worker given one computes on CUDA. Replicas stay bitwise equal "
        "across devices; a GPU's trial costs and gradients can differ from a CPU's in the last bits."))
    address: str | None = Field(default=None, description=(
        "The Ray cluster to join (`hes train` only; `auto` finds a local `ray start`). null: start a Ray on this "
        "machine, or join $RAY_ADDRESS. The service refuses it: its jobs run on the service's own cluster "
        "(`HES_RAY_ADDRESS`)."))
    runtime_env: dict[str, Any] | None = Field(default=None, description=(
        "Passed to Ray for the job's actors, e.g. `{py_modules: [./mypkg]}` or `{working_dir: .}`, so that "
        "model.factory and data.factory import on every node; local paths are uploaded by the driver (`hes "
        "train` only: the service runs no code sent with a job)."))
    relays: bool | Literal["auto"] = Field(default="auto", description=(
        "Fan each round out through a relay actor per node (no CPU of its own): the coordinator makes one Ray "
        "call per node per round instead of one per worker, and the relay returns its node's replies together; "
        "bytes and results are the same. A relay adds one hop to every round and moves the calls to its own "
        "process, so `auto` turns relays on only when the workers span several nodes (whose relays fan out side "
        "by side) and one of them holds at least 4 workers, where they cut the coordinator's CPU per round and "
        "how fast it grows with the workers (BENCHMARKS.md, \"Fan-out\"); with one worker per node they save no "
        "call. A relay that dies is made again; its workers are recovered as after any failed call."))
    full_rounds: Literal["server", "allreduce"] = Field(default="server", description=(
        "How full rounds (and localsgd averages) travel. `server`: every worker sends its gradient to the "
        "coordinator, which sends the mean back (2 x workers x 4P bytes through the coordinator's link per round). "
        "`allreduce`: the workers sum them among themselves in a gloo ring (about 2 x 4P bytes on each worker's "
        "link, whatever the number of workers); the coordinator receives only the losses and sends the seeds, and "
        "reads the parameters from a worker when it evaluates, checkpoints or repairs one. A worker that dies or "
        "loses its link ends the collective within HES_COLLECTIVE_TIMEOUT_S (30 s) and the round is redone over "
        "the live workers; when every worker is lost at once the job goes back to its last checkpoint and redoes "
        "the rounds since. Needs the `ray` backend."))
    backend: Literal["ray", "local"] = Field(default="ray", description=(
        "`ray`: each worker is a Ray actor. `local`: the `cluster.workers` replicas run in this process one "
        "after another, each applying every decision itself as an actor does, so the job ends bitwise equal to "
        "the Ray job of the same config with the same payload bytes counted (`hes train` only; no GPUs)."))

    @model_validator(mode="after")
    def _local_backend(self) -> ClusterConfig:
        if self.backend == "local" and self.gpus_per_worker:
            raise ValueError("cluster.gpus_per_worker: the local backend computes on this process's CPU")
        if self.backend == "local" and self.address is not None:
            raise ValueError("cluster.address: the local backend runs no Ray; leave the address unset")
        if self.full_rounds == "allreduce" and (self.backend == "local" or self.workers == 0):
            raise ValueError("cluster.full_rounds: allreduce runs among Ray worker actors; it needs cluster.backend "
                             "ray and cluster.workers >= 1")
        if self.backend == "local" and self.runtime_env is not None:
            raise ValueError("cluster.runtime_env: the local backend runs no Ray; the factories import in this process")
        return self


class ObjectiveConfig(_Strict):
    """A black-box objective (workers/blackbox.py): the job trains a policy by its episode returns, with no data set,
    in `hybrid.mode: zo` with `combine: es`. A trial moves every weight by `hybrid.sigma` times its seed's noise."""
    factory: Factory = Field(description=(
        "`\"package.module:function\"` called with `objective.kwargs`; it returns run(policy, seed) -> float, the "
        "return of one episode (higher is better). Through the service it must lie inside "
        "`HES_ALLOWED_FACTORIES`."))
    kwargs: dict[str, Any] = Field(default_factory=dict, description=(
        "Keyword arguments of `objective.factory` (plain YAML data)."))
    episodes: Annotated[int, Field(ge=1, le=10000)] = Field(default=1, description=(
        "Episodes per trial; a trial's score is their mean return. A pair's two trials play the same episodes."))
    inputs: Annotated[int, Field(ge=1, le=65536)] | None = Field(default=None, description=(
        "The built-in mlp policy's input size (the observation's length); null with `model.arch: module`."))
    outputs: Annotated[int, Field(ge=1, le=65536)] | None = Field(default=None, description=(
        "The built-in mlp policy's output size (e.g. one score per discrete action); null with "
        "`model.arch: module`."))
    rounds_per_epoch: Annotated[int, Field(ge=1, le=100000)] = Field(default=10, description=(
        "Rounds between two evaluations (a row of history.csv, a checkpoint); the job runs `train.epochs` of them."))
    eval_episodes: Annotated[int, Field(ge=1, le=10000)] = Field(default=10, description=(
        "The fixed evaluation episodes (seeded by the job seed alone) of `final.return` and of every epoch's "
        "`return_mean` and `return_std`."))
    normalize: bool = Field(default=False, description=(
        "Feed the policy (obs - mean) / std, clipped to 5, from the running statistics of every observation the "
        "trials saw; they travel as 2 + 4 (1 + 2 d) bytes per worker per round each way for d = "
        "`objective.inputs` (built-in mlp only)."))
    target_return: Annotated[float, Field(allow_inf_nan=False)] | None = Field(default=None, description=(
        "End the job SUCCEEDED at the first epoch whose evaluation return reaches it; null: train every epoch."))


class JobConfig(_Strict):
    """A training job: its name and seed, and one section each for data, model, train, hybrid and cluster."""

    name: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")] = Field(default=
        "job", description="The job's name (letters, digits, `_`, `.` and `-`), shown in logs and stored in its "
        "model.safetensors.")
    seed: Annotated[int, Field(ge=0, lt=2**31)] = Field(default=100, description=(
        "Everything random follows from it: initial parameters, the dev split, minibatch order, every trial's "
        "seed and the Dirichlet partition. The same config and seed give the same parameters, bit for bit."))
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    hybrid: HybridConfig = Field(default_factory=HybridConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    objective: ObjectiveConfig | None = Field(default=None, description=(
        "A black-box objective instead of a data set (section below; `hybrid.mode: zo`, `combine: es`); null: the "
        "job trains on `data`."))

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
