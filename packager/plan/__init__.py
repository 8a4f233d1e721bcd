"""The packing planner: which quant, which experts stay hot, and whether a model fits a device.

Pure arithmetic over plain data (a ModelShape, a DeviceProfile, optional routing statistics);
no engine, no weights. Sizes come from `contract.quant_types` estimates, so a plan is a forecast:
the bundle's real layout is measured on the quantized file. One module per concept:
shape (the model), expert_usage (measured routing), sizes (bytes per choice), forecast (hot set,
hit rate, speed), result (Plan, Suggestion), search (make_plan, suggest), render (render_plan).
"""
