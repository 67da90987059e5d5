"""uniad_mini: a small, readable UniAD (You et al., "A Unified Model for Multi-class Anomaly Detection", NeurIPS 2022)."""
