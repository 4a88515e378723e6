package rapport.peer;

import java.time.DateTimeException;
import java.time.LocalDate;

/** RFC 3339 instants and YYYY-MM-DD days, to and from UTC milliseconds and day numbers (as rapport's codec/time.rs). */
final class Times {
    static final long DAY_MS = 86_400_000L;
    /** 0000-01-01T00:00:00Z and 10000-01-01T00:00:00Z. */
    private static final long FIRST_MS = -62_167_219_200_000L;
    private static final long END_MS = 253_402_300_800_000L;

    private Times() {}

    static int dayOf(long ms) {
        return (int) Math.floorDiv(ms, DAY_MS);
    }

    /** UTC milliseconds, or Long.MIN_VALUE when {@code s} is not an RFC 3339 time. */
    static long parseRfc3339(String s) {
        int n = s.length();
        if (n < 20 || s.charAt(4) != '-' || s.charAt(7) != '-' || s.charAt(13) != ':' || s.charAt(16) != ':') {
            return Long.MIN_VALUE;
        }
        char sep = s.charAt(10);
        if (sep != 'T' && sep != 't' && sep != ' ') {
            return Long.MIN_VALUE;
        }
        int year = digits(s, 0, 4), month = digits(s, 5, 7), day = digits(s, 8, 10);
        int hour = digits(s, 11, 13), min = digits(s, 14, 16), sec = digits(s, 17, 19);
        if ((year | month | day | hour | min | sec) < 0 || hour > 23 || min > 59 || sec > 59) {
            return Long.MIN_VALUE;
        }
        int i = 19;
        int milli = 0;
        if (i < n && s.charAt(i) == '.') {
            int start = ++i;
            while (i < n && s.charAt(i) >= '0' && s.charAt(i) <= '9') {
                i++;
            }
            int len = i - start;
            if (len == 0) {
                return Long.MIN_VALUE;
            }
            for (int k = 0; k < 3; k++) {
                milli = milli * 10 + (k < len ? s.charAt(start + k) - '0' : 0);
            }
        }
        long offsetMin;
        if (i == n - 1 && (s.charAt(i) == 'Z' || s.charAt(i) == 'z')) {
            offsetMin = 0;
        } else if (i == n - 6 && (s.charAt(i) == '+' || s.charAt(i) == '-') && s.charAt(i + 3) == ':') {
            int oh = digits(s, i + 1, i + 3), om = digits(s, i + 4, i + 6);
            if (oh < 0 || om < 0 || oh > 23 || om > 59) {
                return Long.MIN_VALUE;
            }
            offsetMin = (s.charAt(i) == '+' ? 1 : -1) * (oh * 60L + om);
        } else {
            return Long.MIN_VALUE;
        }
        long epochDay;
        try {
            epochDay = LocalDate.of(year, month, day).toEpochDay();
        } catch (DateTimeException e) {
            return Long.MIN_VALUE;
        }
        long ms = epochDay * DAY_MS + ((hour * 60L + min) * 60L + sec) * 1000L + milli - offsetMin * 60_000L;
        return (ms >= FIRST_MS && ms < END_MS) ? ms : Long.MIN_VALUE;
    }

    /** The UTC day number of YYYY-MM-DD (or of a full RFC 3339 time), or Integer.MIN_VALUE. */
    static int parseDateDay(String s) {
        if (s.length() == 10 && s.charAt(4) == '-' && s.charAt(7) == '-') {
            int y = digits(s, 0, 4), m = digits(s, 5, 7), d = digits(s, 8, 10);
            if ((y | m | d) < 0) {
                return Integer.MIN_VALUE;
            }
            try {
                return (int) LocalDate.of(y, m, d).toEpochDay();
            } catch (DateTimeException e) {
                return Integer.MIN_VALUE;
            }
        }
        long ms = parseRfc3339(s);
        return ms == Long.MIN_VALUE ? Integer.MIN_VALUE : dayOf(ms);
    }

    private static int digits(String s, int from, int to) {
        int v = 0;
        for (int i = from; i < to; i++) {
            char c = s.charAt(i);
            if (c < '0' || c > '9') {
                return -1;
            }
            v = v * 10 + (c - '0');
        }
        return v;
    }

    /** 2026-11-20T10:15:00Z, or 2026-11-20T10:15:00.123Z when the milliseconds are not zero. */
    static String formatRfc3339(long ms) {
        StringBuilder b = new StringBuilder(24);
        long day = Math.floorDiv(ms, DAY_MS);
        long inDay = Math.floorMod(ms, DAY_MS);
        LocalDate d = LocalDate.ofEpochDay(day);
        appendDate(b, d);
        long secs = inDay / 1000, milli = inDay % 1000;
        b.append('T');
        two(b, (int) (secs / 3600));
        b.append(':');
        two(b, (int) (secs / 60 % 60));
        b.append(':');
        two(b, (int) (secs % 60));
        if (milli != 0) {
            b.append('.');
            b.append((char) ('0' + milli / 100)).append((char) ('0' + milli / 10 % 10)).append((char) ('0' + milli % 10));
        }
        return b.append('Z').toString();
    }

    static String formatDay(int day) {
        StringBuilder b = new StringBuilder(10);
        appendDate(b, LocalDate.ofEpochDay(day));
        return b.toString();
    }

    private static void appendDate(StringBuilder b, LocalDate d) {
        int y = d.getYear();
        if (y >= 0 && y <= 9999) {
            two(b, y / 100);
            two(b, y % 100);
        } else {
            b.append(y);
        }
        b.append('-');
        two(b, d.getMonthValue());
        b.append('-');
        two(b, d.getDayOfMonth());
    }

    private static void two(StringBuilder b, int v) {
        b.append((char) ('0' + v / 10)).append((char) ('0' + v % 10));
    }
}
