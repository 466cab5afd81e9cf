"""kipjax: JAX/Flax framework for knowledge-intensive and entity-centric NLP."""
from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax[cpu]>=0.10,<0.11",
    "flax>=0.12,<0.13",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12,<0.13",
    "gin-config>=0.5",
    "transformers>=5.0,<6",
    "tokenizers>=0.22",
    "safetensors>=0.6",
    # scann 1.4.2's op library breaks against TensorFlow 2.21; seqio 0.0.20 works with 2.20.
    "scann==1.4.2",
    "seqio==0.0.20",
    "tensorflow~=2.20.0",
    "tensorflow-text~=2.20.0",
    "tensorflow-datasets>=4.9",
    "tensorboard>=2.20",
    "tqdm>=4.66",
    "numpy>=1.26",
    "scipy>=1.11",
    "matplotlib>=3.8",
    "pytrec-eval-terrier>=0.5",  # trec_eval's measures (passage-level R-precision on KILT); import pytrec_eval
    "rdflib>=7,<8",  # NIF (RDF Turtle) entity-linking corpora and GERBIL files: kipjax.data.nif
    "bm25s>=0.2",  # BM25 hard negatives (TACO's warmup)
    "regex",  # \p{L}-style classes for DPR's answer tokenizer: kipjax.metrics.qa
]

setup(
    name="kipjax",
    version="0.1.0",
    description="JAX/Flax framework for knowledge-intensive and entity-centric NLP",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["kipjax", "kipjax.*", "tasks", "tasks.*"]),
    # The bundled demo dataset (documents/, mentions/, tokenizer/) ships inside the package.
    package_data={"kipjax.data": ["demo_zeshel/*/*", "demo_coref/*", "demo_coref/*/*", "demo_docred/*", "demo_docred/*/*",
                                  "demo_kilt/*", "demo_kilt/*/*", "demo_entqa/*",
                                  "demo_entqa/*/*", "demo_imprag/*", "demo_imprag/*/*"]},
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # torch (CPU build) is only needed for parity tests against transformers' PyTorch models.
        "test": ["pytest>=8", "pytest-xdist>=3.5", "torch==2.13.0"],
        "faiss": ["faiss-cpu"],
    },
)
