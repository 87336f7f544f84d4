// Placeholder until the chunker's WASM kernel lands: assembles lib/wasm/*.wat.
console.log('build-wasm: nothing to build');
