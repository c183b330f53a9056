"""Keras models: preprocessing layers, the ResNet patch classifier and SpotTune."""
