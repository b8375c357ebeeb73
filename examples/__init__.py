"""Jobs that train a model of their own on data of their own (README, "Bring your own model and data").

Each YAML file here names functions of the module beside it: `model.factory` returns a torch.nn.Module,
`data.factory` the arrays. `hes serve` runs the factories of this package by default (HES_ALLOWED_FACTORIES).
"""
