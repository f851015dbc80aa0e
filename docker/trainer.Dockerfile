# GPU trainer: a PyTorch CUDA image with the trainer and cvpipe's pure-Python shard schema,
# and nothing else of cvpipe: no compiled extension, no FFmpeg, no Ray. It reads the
# shards `cvpipe shard` wrote (shared storage) and runs `cvtrain` under torchrun.
#
#   docker build -f docker/trainer.Dockerfile -t cvpipe-trainer:0.1.0 .
#   docker run --gpus all --ipc=host -v /data:/data cvpipe-trainer:0.1.0 \
#       torchrun --nproc_per_node 8 -m trainer.cli fit --config ucf101_iframe --set data.root=/data/shards
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

WORKDIR /opt/cvpipe
COPY pyproject.toml README.md CMakeLists.txt ./
COPY cvpipe/ cvpipe/
COPY trainer/ trainer/
# wheel.cmake=false builds the package without its extension; --no-deps keeps Ray and
# the encoder out; the trainer's own needs follow (the base image brings torch).
RUN pip install --no-deps --config-settings=wheel.cmake=false . \
 && pip install "webdataset==1.0.2" "numpy>=1.24" "Pillow>=10" "zstandard>=0.22" "tqdm>=4.60" "matplotlib>=3.7" \
 && python -c "import trainer.data.shard_reader, trainer.cli; print('cvtrain ready')"

WORKDIR /workspace
CMD ["cvtrain", "--help"]
