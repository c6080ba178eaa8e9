"""Test-wide settings: quiet TF, the TensorFlow Keras backend by default, and no network."""

import ipaddress
import os
import socket

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


def _is_local(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True, scope="session")
def no_network():
    """Tests must not reach the network: any connection off loopback fails loudly."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def guard(fn):
        def wrapped(self, address):
            if not _is_local(address):
                raise RuntimeError(f"test tried to reach the network: {address!r}")
            return fn(self, address)
        return wrapped

    socket.socket.connect, socket.socket.connect_ex = guard(real_connect), guard(real_connect_ex)
    yield
    socket.socket.connect, socket.socket.connect_ex = real_connect, real_connect_ex


@pytest.fixture(scope="session")
def fashion_mnist_dir():
    if not os.path.isdir(FASHION_MNIST_DIR):
        pytest.fail(f"{FASHION_MNIST_DIR} missing: run the tests through tools/env, which installs dataset-fashion-mnist")
    return FASHION_MNIST_DIR
