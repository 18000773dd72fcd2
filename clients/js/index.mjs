// ES module entry: the logic lives once, in index.cjs. A default import of a CommonJS module
// works in Node and in every bundler, where named imports from it may not.
import recovery from './index.cjs';

export const withRecovery = recovery.withRecovery;
