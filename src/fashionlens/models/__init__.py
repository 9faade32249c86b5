"""Models: backbone factory, the ML-GCN style model and the landmark-driven clothing network."""
