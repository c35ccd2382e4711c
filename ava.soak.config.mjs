// Soak and fault-injection runs (npm run soak): long, so not part of npm test.
export default {
  files: ['test/soak/**/*.soak.ts'],
  extensions: { ts: 'module' },
  nodeArguments: ['--import=tsx'],
  workerThreads: false,
  concurrency: 1,
  timeout: '60m',
};
