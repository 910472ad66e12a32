"use strict";
// Preloaded into cdktf's jsii runtime (node --require, via NODE_OPTIONS) by stacks/__init__.py and
// ops/synth.py. The JavaScript index of @cdktf/provider-aws requires all of its ~2,100 resource
// modules (247 MB of JavaScript, ~2.3 s here) when the Python side loads the assembly; a stack
// uses a few dozen. We hand the jsii kernel an exports object whose entries require their module
// on first access, which is what the kernel does when it looks up "@cdktf/provider-aws.vpc.Vpc".
// Any index that is not the plain `exports.x = require("./x");` list falls through to the normal
// load, so a different provider release stays correct, just not faster.
const Module = require("module");
const fs = require("fs");

const INDEX = /[\\/]@cdktf[\\/]provider-aws[\\/]lib[\\/]index\.js$/;
const REQUIRE_LINE = /^exports\.([A-Za-z0-9_$]+) = require\("(\.\/[a-z0-9-]+)"\);$/;
const DECLARE_LINE = /^exports\.[A-Za-z0-9_$]+( = exports\.[A-Za-z0-9_$]+)* = void 0;$/;
const ALLOWED_LINE = /^("use strict";|Object\.defineProperty\(exports, "__esModule", \{ value: true \}\);|\/\*\*|\s*\*.*|\s*\*\/|\/\/.*|)$/;

function lazyExports(filename) {
  const entries = [];
  for (const line of fs.readFileSync(filename, "utf8").split("\n")) {
    const m = REQUIRE_LINE.exec(line);
    if (m) {
      entries.push([m[1], m[2]]);
    } else if (!DECLARE_LINE.test(line) && !ALLOWED_LINE.test(line)) {
      return null;
    }
  }
  if (entries.length === 0) {
    return null;
  }
  const load = Module.createRequire(filename);
  const exports = {};
  Object.defineProperty(exports, "__esModule", { value: true });
  for (const [name, target] of entries) {
    Object.defineProperty(exports, name, {
      configurable: true,
      enumerable: true,
      get() {
        const value = load(target);
        Object.defineProperty(exports, name, { value, writable: true, enumerable: true, configurable: true });
        return value;
      },
    });
  }
  return exports;
}

const originalLoad = Module._load;
Module._load = function (request, parent, isMain) {
  if (INDEX.test(request)) {
    const filename = Module._resolveFilename(request, parent, isMain);
    const cached = Module._cache[filename];
    if (cached) {
      return cached.exports;
    }
    const exports = lazyExports(filename);
    if (exports !== null) {
      const mod = new Module(filename, parent);
      mod.filename = filename;
      mod.exports = exports;
      mod.loaded = true;
      Module._cache[filename] = mod;
      return exports;
    }
  }
  return originalLoad.apply(this, arguments);
};
