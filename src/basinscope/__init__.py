"""basinscope: see, measure and compare the loss landscapes of neural networks."""

__version__ = "0.2.0"
