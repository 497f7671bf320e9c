// A small msgpack codec for the demo shop (the subset the Lifeline protocol uses).
// Lifeline's client speaks msgpack whenever the page offers window.MessagePack with
// encode(value) -> Uint8Array and decode(Uint8Array) -> value (the interface of
// @msgpack/msgpack's browser bundle), and JSON otherwise. See docs/CLIENT.md.
"use strict";
window.MessagePack = window.MessagePack || (() => {
  const te = new TextEncoder(), td = new TextDecoder();
  function encode(value) {
    const b = [];
    const u = (n, k) => { while (k--) b.push(Math.floor(n / 2 ** (8 * k)) & 255); }; // big-endian, k bytes
    const head = (n, fix, lim, c16) => n < lim ? b.push(fix | n) : n < 65536 ? (b.push(c16), u(n, 2)) : (b.push(c16 + 1), u(n, 4));
    const e = (v) => {
      if (v == null) b.push(0xc0);
      else if (typeof v === "boolean") b.push(v ? 0xc3 : 0xc2);
      else if (typeof v === "number") {
        if (Number.isSafeInteger(v) && v >= 0) v < 128 ? b.push(v) : v < 2 ** 32 ? (b.push(0xce), u(v, 4)) : (b.push(0xcf), u(v, 8));
        else if (Number.isInteger(v) && v >= -(2 ** 31)) { b.push(0xd2); u(v >>> 0, 4); }
        else { const d = new DataView(new ArrayBuffer(8)); d.setFloat64(0, v); b.push(0xcb, ...new Uint8Array(d.buffer)); }
      } else if (typeof v === "string") { const s = te.encode(v); head(s.length, 0xa0, 32, 0xda); for (const x of s) b.push(x); }
      else if (Array.isArray(v)) { head(v.length, 0x90, 16, 0xdc); v.forEach(e); }
      else if (typeof v === "object") {
        const ks = Object.keys(v).filter((k) => v[k] !== undefined);
        head(ks.length, 0x80, 16, 0xde);
        ks.forEach((k) => { e(k); e(v[k]); });
      } else b.push(0xc0);
    };
    e(value);
    return new Uint8Array(b);
  }
  function decode(bytes) {
    const d = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    let p = 0;
    const u = (k) => { let x = 0; while (k--) x = x * 256 + d.getUint8(p++); return x; };
    const int = (k) => { const v = u(k); return v >= 2 ** (8 * k - 1) ? v - 2 ** (8 * k) : v; };
    const str = (k) => td.decode(bytes.subarray(p, (p += k)));
    const arr = (k) => { const r = []; while (k--) r.push(x()); return r; };
    const map = (k) => { const r = {}; while (k--) { const key = x(); r[key] = x(); } return r; };
    const x = () => {
      const c = d.getUint8(p++);
      if (c < 0x80) return c;
      if (c < 0x90) return map(c & 15);
      if (c < 0xa0) return arr(c & 15);
      if (c < 0xc0) return str(c & 31);
      if (c >= 0xe0) return c - 256;
      switch (c) {
        case 0xc0: return null;
        case 0xc2: return false;
        case 0xc3: return true;
        case 0xc4: case 0xc5: case 0xc6: { const n = u(1 << (c - 0xc4)); const v = bytes.slice(p, p + n); p += n; return v; }
        case 0xca: p += 4; return d.getFloat32(p - 4);
        case 0xcb: p += 8; return d.getFloat64(p - 8);
        case 0xcc: case 0xcd: case 0xce: case 0xcf: return u(1 << (c - 0xcc));
        case 0xd0: case 0xd1: case 0xd2: case 0xd3: return int(1 << (c - 0xd0));
        case 0xd9: case 0xda: case 0xdb: return str(u(1 << (c - 0xd9)));
        case 0xdc: case 0xdd: return arr(u(c === 0xdc ? 2 : 4));
        case 0xde: case 0xdf: return map(u(c === 0xde ? 2 : 4));
      }
      throw new Error("msgpack: type 0x" + c.toString(16) + " is not supported");
    };
    return x();
  }
  return { encode, decode };
})();
