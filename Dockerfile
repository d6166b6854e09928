# Build: docker build -t kubeconfig-operator .
FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so code changes do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin kubeconfig-operator

# Distroless: no shell, no package manager, runs as an unprivileged user.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/kubeconfig-operator /usr/local/bin/kubeconfig-operator
USER 65532:65532
EXPOSE 8000
ENTRYPOINT ["/usr/local/bin/kubeconfig-operator"]
CMD ["run"]
