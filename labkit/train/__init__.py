"""Fine-tuning with XTuner: the recipe (settings and presets), the rendered XTuner config, the
run and its launch entry, the lean model type, the memory planner and the loss plot.
"""
