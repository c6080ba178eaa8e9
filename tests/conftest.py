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


@pytest.fixture(scope="session")
def tiny(tmp_path_factory, fashion_mnist_dir):
    """A tiny real labeled set (Fashion-MNIST-LT, rho 10, at most 60 a class): its TFRecords and label statistics."""
    import glob

    from components.data.longtail import SplitSpec
    from components.data.prepare import prepare_from_source
    from models.label_stats import derive_label_stats

    out = str(tmp_path_factory.mktemp("tiny") / "data")
    manifest = prepare_from_source("fashion_mnist", SplitSpec(rho=10, n_max=60, class_order="shuffle", val_per_class=5,
                                                              unlabeled_size=0, seed=3), out, fashion_mnist_dir)
    files = sorted(glob.glob(os.path.join(out, "labeled", "*.tfrecord")))
    return files, derive_label_stats(manifest["splits"]["labeled"]["per_class_counts"], manifest["class_names"])
