# wstrace: multi-stage build, small non-root runtime image.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches && echo 'fn main() {}' > src/main.rs && echo '' > src/lib.rs \
    && echo 'fn main() {}' > benches/harness.rs \
    && cargo build --release --locked --bin wstrace \
    && rm -rf src benches
COPY src ./src
COPY benches ./benches
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin wstrace \
    && strip target/release/wstrace

FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 wstrace \
    && useradd --system --uid 10001 --gid wstrace --no-create-home --shell /usr/sbin/nologin wstrace \
    && mkdir -p /var/log/wstrace && chown wstrace:wstrace /var/log/wstrace
COPY --from=build /src/target/release/wstrace /usr/local/bin/wstrace
USER 10001:10001
ENV WSTRACE_LISTEN=0.0.0.0:8080 \
    WSTRACE_LOG_DIR=/var/log/wstrace
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD ["wstrace", "health", "--url", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["wstrace"]
CMD ["serve"]
