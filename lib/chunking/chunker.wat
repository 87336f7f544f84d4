;; casync buzhash cut scanner (SPEC §3.3/§3.4), the hot loop of lib/chunker.ts.
;; Memory layout (set up by chunker.ts): T[256] u32 at 0, T16[b] = rol32(T[b],16)
;; at 1024, data from 2048. The cut test h % d == d-1 is done without a division:
;; for d = d_odd * 2^shift, (h+1) is divisible by d exactly when
;; rotr((h+1) * inverse(d_odd), shift) <= floor((2^32-1)/d)  (Granlund-Montgomery),
;; except that h = 0xffffffff wraps h+1 to 0: that h cuts only when d divides 2^32.
;; Runs of zero bytes (common in disk images) are skipped rather than rolled
;; through: every position whose window lies inside the run has the same hash, so
;; if that hash is no cut, none of them is.
(module
  (memory (export "memory") 1)
  (global $inverse (mut i32) (i32.const 1))
  (global $shift (mut i32) (i32.const 0))
  (global $limit (mut i32) (i32.const -1))
  (global $allOnesCuts (mut i32) (i32.const 1))
  ;; hash of 48 zero bytes
  (global $zeroHash (mut i32) (i32.const 0))

  (func (export "configure") (param $inverse i32) (param $shift i32) (param $limit i32) (param $allOnesCuts i32)
        (param $zeroHash i32)
    (global.set $inverse (local.get $inverse))
    (global.set $shift (local.get $shift))
    (global.set $limit (local.get $limit))
    (global.set $allOnesCuts (local.get $allOnesCuts))
    (global.set $zeroHash (local.get $zeroHash)))

  ;; The first address in [p, to) holding a non-zero byte, or `to`.
  (func $firstNonZero (param $p i32) (param $to i32) (result i32)
    (block $bytes
      (loop $words
        (br_if $bytes (i32.gt_u (i32.add (local.get $p) (i32.const 8)) (local.get $to)))
        (br_if $bytes (i64.ne (i64.load (local.get $p)) (i64.const 0)))
        (local.set $p (i32.add (local.get $p) (i32.const 8)))
        (br $words)))
    (block $done
      (loop $byte
        (br_if $done (i32.ge_u (local.get $p) (local.get $to)))
        (br_if $done (i32.load8_u (local.get $p)))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $byte)))
    (local.get $p))

  ;; Whether hash h is a cut (the division-free test described above).
  (func $isCut (param $h i32) (result i32)
    (i32.and
      (i32.le_u
        (i32.rotr (i32.mul (i32.add (local.get $h) (i32.const 1)) (global.get $inverse)) (global.get $shift))
        (global.get $limit))
      (i32.or (i32.ne (local.get $h) (i32.const -1)) (global.get $allOnesCuts))))

  ;; Returns the first q in [from, to] (memory addresses, from >= 2048 + 48) such
  ;; that the window of the 48 bytes before q satisfies the cut test, or -1.
  (func (export "scan") (param $from i32) (param $to i32) (result i32)
    (local $h i32) (local $p i32) (local $q i32)
    (local $inverse i32) (local $shift i32) (local $limit i32)
    (local.set $inverse (global.get $inverse))
    (local.set $shift (global.get $shift))
    (local.set $limit (global.get $limit))
    ;; hash of the window ending at $from
    (local.set $p (i32.sub (local.get $from) (i32.const 48)))
    (loop $prime
      (local.set $h
        (i32.xor
          (i32.rotl (local.get $h) (i32.const 1))
          (i32.load (i32.shl (i32.load8_u (local.get $p)) (i32.const 2)))))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (br_if $prime (i32.lt_u (local.get $p) (local.get $from))))
    (local.set $q (local.get $from))
    ;; A window of zeros that is no cut: skip to the last position whose window is
    ;; still all zeros. (Checked once per call, which is once per chunk, to keep
    ;; the loop below lean: a zero run starting mid-chunk is rolled through up to
    ;; the next chunk.) A hash equal to zeroHash by chance finds a non-zero byte
    ;; inside the window and skips nothing.
    (if (i32.and (i32.eq (local.get $h) (global.get $zeroHash)) (i32.eqz (call $isCut (local.get $h))))
      (then
        (local.set $p (call $firstNonZero (i32.sub (local.get $q) (i32.const 48)) (local.get $to)))
        (if (i32.gt_u (local.get $p) (local.get $q))
          (then (local.set $q (local.get $p))))))
    ;; Four positions per iteration while at least four remain: one bounds check
    ;; instead of four. Each step: test the window ending at q, then roll in byte q.
    (block $rest
      (loop $four
        (br_if $rest (i32.gt_u (i32.add (local.get $q) (i32.const 4)) (local.get $to)))
        (if (i32.le_u
              (i32.rotr (i32.mul (i32.add (local.get $h) (i32.const 1)) (local.get $inverse)) (local.get $shift))
              (local.get $limit))
          (then
            (if (i32.or (i32.ne (local.get $h) (i32.const -1)) (global.get $allOnesCuts))
              (then (return (local.get $q))))))
        (local.set $h
          (i32.xor
            (i32.xor
              (i32.rotl (local.get $h) (i32.const 1))
              (i32.load offset=1024 (i32.shl (i32.load8_u (i32.sub (local.get $q) (i32.const 48))) (i32.const 2))))
            (i32.load (i32.shl (i32.load8_u (local.get $q)) (i32.const 2)))))
        (local.set $q (i32.add (local.get $q) (i32.const 1)))
        (if (i32.le_u
              (i32.rotr (i32.mul (i32.add (local.get $h) (i32.const 1)) (local.get $inverse)) (local.get $shift))
              (local.get $limit))
          (then
            (if (i32.or (i32.ne (local.get $h) (i32.const -1)) (global.get $allOnesCuts))
              (then (return (local.get $q))))))
        (local.set $h
          (i32.xor
            (i32.xor
              (i32.rotl (local.get $h) (i32.const 1))
              (i32.load offset=1024 (i32.shl (i32.load8_u (i32.sub (local.get $q) (i32.const 48))) (i32.const 2))))
            (i32.load (i32.shl (i32.load8_u (local.get $q)) (i32.const 2)))))
        (local.set $q (i32.add (local.get $q) (i32.const 1)))
        (if (i32.le_u
              (i32.rotr (i32.mul (i32.add (local.get $h) (i32.const 1)) (local.get $inverse)) (local.get $shift))
              (local.get $limit))
          (then
            (if (i32.or (i32.ne (local.get $h) (i32.const -1)) (global.get $allOnesCuts))
              (then (return (local.get $q))))))
        (local.set $h
          (i32.xor
            (i32.xor
              (i32.rotl (local.get $h) (i32.const 1))
              (i32.load offset=1024 (i32.shl (i32.load8_u (i32.sub (local.get $q) (i32.const 48))) (i32.const 2))))
            (i32.load (i32.shl (i32.load8_u (local.get $q)) (i32.const 2)))))
        (local.set $q (i32.add (local.get $q) (i32.const 1)))
        (if (i32.le_u
              (i32.rotr (i32.mul (i32.add (local.get $h) (i32.const 1)) (local.get $inverse)) (local.get $shift))
              (local.get $limit))
          (then
            (if (i32.or (i32.ne (local.get $h) (i32.const -1)) (global.get $allOnesCuts))
              (then (return (local.get $q))))))
        (local.set $h
          (i32.xor
            (i32.xor
              (i32.rotl (local.get $h) (i32.const 1))
              (i32.load offset=1024 (i32.shl (i32.load8_u (i32.sub (local.get $q) (i32.const 48))) (i32.const 2))))
            (i32.load (i32.shl (i32.load8_u (local.get $q)) (i32.const 2)))))
        (local.set $q (i32.add (local.get $q) (i32.const 1)))
        (br $four)))
    (loop $scan
      (if (i32.le_u
            (i32.rotr (i32.mul (i32.add (local.get $h) (i32.const 1)) (local.get $inverse)) (local.get $shift))
            (local.get $limit))
        (then
          (if (i32.or (i32.ne (local.get $h) (i32.const -1)) (global.get $allOnesCuts))
            (then (return (local.get $q))))))
      (if (i32.ge_u (local.get $q) (local.get $to))
        (then (return (i32.const -1))))
      ;; roll: byte q-48 leaves, byte q enters
      (local.set $h
        (i32.xor
          (i32.xor
            (i32.rotl (local.get $h) (i32.const 1))
            (i32.load offset=1024 (i32.shl (i32.load8_u (i32.sub (local.get $q) (i32.const 48))) (i32.const 2))))
          (i32.load (i32.shl (i32.load8_u (local.get $q)) (i32.const 2)))))
      (local.set $q (i32.add (local.get $q) (i32.const 1)))
      (br $scan))
    (i32.const -1))
)
