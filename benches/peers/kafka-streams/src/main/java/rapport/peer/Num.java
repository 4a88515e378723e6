package rapport.peer;

import java.math.BigDecimal;
import java.math.RoundingMode;

/** Rust's float rounding and formatting, so that figures and sentences match rapport's to the digit. */
final class Num {
    private Num() {}

    /** f64::round: to the nearest integer, halves away from zero. */
    static double round(double x) {
        if (!Double.isFinite(x)) {
            return x;
        }
        double f = Math.floor(x);
        double diff = x - f;
        if (diff == 0.5) {
            return x < 0 ? f : f + 1;
        }
        return Math.rint(x);
    }

    /** format!("{x:.prec$}"): the exact binary value rounded half to even, the sign kept (also on "-0"). */
    static String fmt(double x, int prec) {
        String s = new BigDecimal(x).setScale(prec, RoundingMode.HALF_EVEN).toPlainString();
        if ((x < 0 || (x == 0 && 1 / x < 0)) && s.charAt(0) != '-') {
            s = "-" + s;
        }
        return s;
    }

    /** format!("{x:+.prec$}"). */
    static String fmtSigned(double x, int prec) {
        String s = fmt(x, prec);
        return s.charAt(0) == '-' ? s : "+" + s;
    }

    static double clamp01(double x) {
        return Math.max(0.0, Math.min(1.0, x));
    }

    static double clamp(double x, double lo, double hi) {
        return Math.max(lo, Math.min(hi, x));
    }
}
