package rapport.peer;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import net.openhft.hashing.LongHashFunction;
import net.openhft.hashing.LongTupleHashFunction;

/** The XXH3 hashes rapport uses: 32-bit id hashes (adoption tables) and the 128-bit output ids. */
final class Hashes {
    private static final LongHashFunction XXH3_64 = LongHashFunction.xx3();
    private static final LongTupleHashFunction XXH3_128 = LongTupleHashFunction.xx128();
    private static final char[] HEX = "0123456789abcdef".toCharArray();

    private Hashes() {}

    /** xxh3_64 of the id's UTF-8 bytes, cut to 32 bits. */
    static int idHash(String s) {
        return (int) XXH3_64.hashBytes(s.getBytes(StandardCharsets.UTF_8));
    }

    /** alert_id: xxh3_128(account, 0x00, rule, episode start as big-endian i64). */
    static String alertId(String account, String rule, long episodeStartMs) {
        byte[] a = account.getBytes(StandardCharsets.UTF_8);
        byte[] r = rule.getBytes(StandardCharsets.US_ASCII);
        ByteBuffer b = ByteBuffer.allocate(a.length + 1 + r.length + 8);
        b.put(a).put((byte) 0).put(r).putLong(episodeStartMs);
        return hex128(b.array());
    }

    /** change_id: xxh3_128(account, 0xff, sequence number as big-endian u32). */
    static String changeId(String account, int seq) {
        byte[] a = account.getBytes(StandardCharsets.UTF_8);
        ByteBuffer b = ByteBuffer.allocate(a.length + 1 + 4);
        b.put(a).put((byte) 0xff).putInt(seq);
        return hex128(b.array());
    }

    private static String hex128(byte[] input) {
        long[] h = XXH3_128.hashBytes(input); // {low64, high64}
        char[] out = new char[32];
        put(out, 0, h[1]);
        put(out, 16, h[0]);
        return new String(out);
    }

    private static void put(char[] out, int at, long v) {
        for (int i = 15; i >= 0; i--) {
            out[at + i] = HEX[(int) (v & 0xf)];
            v >>>= 4;
        }
    }
}
