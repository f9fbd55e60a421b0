# The bpr DICOM node. Build: docker build -t bpr-node .
# Run:   docker run -p 11112:11112 -p 8080:8080 -v bpr-data:/data bpr-node
# Mount your own config.yaml at /etc/bpr/config.yaml to add peers (see README "Add it to your PACS").
FROM python:3.11-slim

RUN useradd --system --create-home --home-dir /home/bpr bpr \
    && mkdir -p /data /etc/bpr && chown bpr /data

WORKDIR /opt/bpr
COPY pyproject.toml README.md ./
COPY model ./model
COPY dicom_node ./dicom_node
COPY bpr ./bpr
# CPU build of torch: the node needs no GPU (≈1 s per 500-slice series on 4 cores).
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
    && pip install --no-cache-dir .

# The shipped config as it is; the container's differences are environment overrides,
# validated like the file (dicom_node.config.ENV_OVERRIDES): listen on all interfaces (DICOM
# and the web view) and keep everything under /data.
COPY config.yaml /etc/bpr/config.yaml
ENV BPR_HOST=0.0.0.0 \
    BPR_WEB_HOST=0.0.0.0 \
    BPR_STORAGE_ROOT=/data/storage \
    BPR_DATABASE_URL=sqlite:////data/index.sqlite

USER bpr
VOLUME /data
EXPOSE 11112 8080
# /healthz checks the DICOM listener, the index database and free storage (503 when one fails).
HEALTHCHECK --interval=30s --timeout=10s CMD python -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=5).status != 200)"
ENTRYPOINT ["bpr"]
CMD ["serve", "--config", "/etc/bpr/config.yaml"]
