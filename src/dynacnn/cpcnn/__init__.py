"""CP-CNN: hyper-class clustering (Alg. 2), compression flow, activation policy, routed model."""
