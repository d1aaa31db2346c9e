"""Upstream's memory-efficient entry point: the same training, with FlashAttention-2 when it is installed."""
from llava.train.train import train

if __name__ == "__main__":
    train()
