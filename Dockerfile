# Portcullis container image: a two-stage build.
#
#   docker build -t portcullis .       (from the repository root)
#   docker run --rm -p 8080:8080 -p 127.0.0.1:9090:9090 \
#     -v portcullis-data:/var/lib/portcullis \
#     -e EXAMPLE_SERVICE_SECRET=change-me portcullis
#
# The runtime image is distroless (glibc, libgcc, CA certificates, no shell)
# and runs as the unprivileged user 65532. The SQLite store lives in
# /var/lib/portcullis, which must be a writable volume: the container's own
# filesystem may be read-only (Kubernetes: readOnlyRootFilesystem) and is
# lost with the container anyway. The default config is
# deploy/portcullis.container.toml; mount your own over
# /etc/portcullis/portcullis.toml (or the whole /etc/portcullis directory).

# --- build ------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src

# Dependencies first, against stub sources, so that a change to src/ does not
# rebuild every crate (Docker reuses this layer while Cargo.toml and
# Cargo.lock are unchanged).
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin portcullis \
    && rm -rf src

# The real sources. touch: their timestamps may be older than the stub build's.
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin portcullis \
    && mkdir -p /out/state/portcullis \
    && cp target/release/portcullis /out/portcullis

# --- runtime ----------------------------------------------------------------
# cc: glibc and libgcc_s, which the binary links (mimalloc and SQLite are
# compiled into it). nonroot: uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot

COPY --from=build /out/portcullis /usr/local/bin/portcullis
# The example configuration, for reference; the default config is the
# container one (listens on 0.0.0.0, store in /var/lib/portcullis).
COPY config/ /usr/share/portcullis/config/
COPY deploy/portcullis.container.toml /etc/portcullis/portcullis.toml
# The state directory /var/lib/portcullis, owned by the runtime user (copied
# as an entry of /out/state/ so that --chown applies to the directory itself):
# a fresh named volume mounted there takes this ownership.
COPY --from=build --chown=65532:65532 /out/state/ /var/lib/

USER 65532:65532
WORKDIR /var/lib/portcullis
VOLUME ["/var/lib/portcullis"]

# 8080: public listener (gateway and authorization server).
# 9090: admin listener (/metrics, /healthz, /readyz); keep it off the internet.
EXPOSE 8080 9090

# SIGTERM (docker stop) drains in-flight requests for server.drain_timeout
# (30 s by default): stop with `docker stop -t 35`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["serve", "--config", "/etc/portcullis/portcullis.toml"]
