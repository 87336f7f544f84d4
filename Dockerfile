# deltad fleet proxy (`deltad proxy`, docs/FLEET.md) as a container.
#   build:  docker build -t deltad .          (or: podman build -t deltad .)
#   run:    see the README's "Fleet mode" section
# Stage 1 compiles TypeScript with the dev dependencies (nothing native: zstd is
# node:zlib's); stage 2 keeps only production dependencies (not the pinned Node
# runtime package: the image has its own Node 24), runs as the unprivileged
# `node` user, and stores the chunk cache in a volume.
FROM node:24-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
# --ignore-scripts: the package's own `prepare` (the build) needs the sources copied below.
RUN npm ci --no-audit --no-fund --ignore-scripts && npm rebuild zstd-napi
COPY tsconfig.json ./
COPY scripts ./scripts
COPY lib ./lib
COPY daemon ./daemon
COPY bin ./bin
COPY bench ./bench
COPY test ./test
RUN npm run build \
 && npm prune --omit=dev --omit=optional --no-audit --no-fund

FROM node:24-bookworm-slim
ENV NODE_ENV=production
WORKDIR /opt/deltad
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist/lib ./dist/lib
COPY --from=build /src/dist/daemon ./dist/daemon
COPY --from=build /src/bin ./bin
RUN mkdir -p /var/cache/deltad-proxy && chown node:node /var/cache/deltad-proxy
USER node
VOLUME ["/var/cache/deltad-proxy"]
EXPOSE 3130
# The status page answers once the cache is open and the port listens (loopback is always allowed).
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:3130/.deltad/status').then(r => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["/opt/deltad/bin/deltad", "proxy", "--listen", "0.0.0.0:3130", "--proxy-cache", "/var/cache/deltad-proxy"]
# Give at least --upstream URL; other options (--allow, --proxy-cache-size, ...) may follow.
CMD ["--help"]
