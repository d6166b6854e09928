# Build: docker build -t kubeconfig-operator .
# (`make image` builds this same file with buildah against local stand-ins for both base images;
# see README, "Deployment".)
FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so code changes do not rebuild them. Cargo reads every target the manifest
# declares, so the `[[bench]]` files come along (they are not built here, but a change to them
# rebuilds this layer); `src` is a stub.
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked --bin kubeconfig-operator && rm -rf src
COPY src ./src
# COPY keeps the files' times, which may be older than the stub's build: touch them so cargo
# rebuilds the crate itself.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin kubeconfig-operator

# Distroless: no shell, no package manager, runs as an unprivileged user.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/kubeconfig-operator /usr/local/bin/kubeconfig-operator
USER 65532:65532
EXPOSE 8000
ENTRYPOINT ["/usr/local/bin/kubeconfig-operator"]
CMD ["run"]
