"""Speed and memory of a SALM preset: FLOP accounting (flops.py) and the `medasr bench` harness (bench.py)."""
