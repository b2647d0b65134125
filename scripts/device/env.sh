# Sourced by the scripts in scripts/device/: where the GPU machine keeps the Python that holds
# torch and transformers (the baselines run on it) and libtorch's libraries, which the carried
# `uniattn` binary loads. Override TORCH_VENV on another machine.
TORCH_VENV=${TORCH_VENV:-/opt/torch/.venv}
PYTHON=${PYTHON:-$TORCH_VENV/bin/python3}
TORCH_LIB=$("$PYTHON" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH=$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# Scratch space for the models the scripts make or unpack there, and Nsight Compute.
WORK=${WORK:-/root}
NCU=${NCU:-/usr/local/cuda/bin/ncu}
