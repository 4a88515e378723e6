package rapport.peer;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonGenerator;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.util.ArrayList;
import java.util.List;

/**
 * Output records in rapport's JSON shape (codec/output.rs): fields in the contract's order, maps
 * ({@code components}, {@code evidence}) with their keys sorted.
 */
final class Json {
    private static final JsonFactory FACTORY = new JsonFactory();

    private Json() {}

    /** A float as serde_json writes it (shortest round-trip form, always with a decimal point). */
    static String number(double v) {
        return Double.toString(v);
    }

    static byte[] scoreChange(String account, int score, int previousScore, String band, String previousBand,
                              double[] values, List<String[]> drivers, long asOfMs, String changeId) {
        ByteArrayOutputStream bytes = new ByteArrayOutputStream(768);
        try (JsonGenerator g = FACTORY.createGenerator(bytes)) {
            g.writeStartObject();
            g.writeStringField("type", "health_score_changed");
            g.writeStringField("account_id", account);
            g.writeNumberField("score", score);
            g.writeFieldName("previous_score");
            if (previousScore >= 0) {
                g.writeNumber(previousScore);
            } else {
                g.writeNull();
            }
            g.writeStringField("band", band);
            g.writeFieldName("previous_band");
            if (previousBand != null) {
                g.writeString(previousBand);
            } else {
                g.writeNull();
            }
            g.writeObjectFieldStart("components");
            List<Integer> order = new ArrayList<>(Engine.N);
            for (int i = 0; i < Engine.N; i++) {
                if (!Double.isNaN(values[i])) {
                    order.add(i);
                }
            }
            order.sort((a, b) -> Engine.COMPONENTS[a].compareTo(Engine.COMPONENTS[b]));
            for (int i : order) {
                g.writeFieldName(Engine.COMPONENTS[i]);
                g.writeRawValue(number(Num.round(values[i] * 10.0) / 10.0));
            }
            g.writeEndObject();
            g.writeArrayFieldStart("drivers");
            for (String[] d : drivers) {
                g.writeStartObject();
                g.writeStringField("signal", d[0]);
                g.writeFieldName("impact");
                g.writeRawValue(d[1]);
                g.writeStringField("detail", d[2]);
                g.writeEndObject();
            }
            g.writeEndArray();
            g.writeStringField("as_of", Times.formatRfc3339(asOfMs));
            g.writeStringField("change_id", changeId);
            g.writeEndObject();
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return bytes.toByteArray();
    }

    static byte[] alert(String alertId, String account, String rule, String severity, String status, long openedAtMs,
                        long resolvedAtMs, int healthScore, List<String[]> evidence, String message) {
        ByteArrayOutputStream bytes = new ByteArrayOutputStream(512);
        try (JsonGenerator g = FACTORY.createGenerator(bytes)) {
            g.writeStartObject();
            g.writeStringField("type", "churn_alert");
            g.writeStringField("alert_id", alertId);
            g.writeStringField("account_id", account);
            g.writeStringField("rule", rule);
            g.writeStringField("severity", severity);
            g.writeStringField("status", status);
            g.writeStringField("opened_at", Times.formatRfc3339(openedAtMs));
            g.writeFieldName("resolved_at");
            if (resolvedAtMs != Long.MIN_VALUE) {
                g.writeString(Times.formatRfc3339(resolvedAtMs));
            } else {
                g.writeNull();
            }
            g.writeNumberField("health_score", healthScore);
            g.writeObjectFieldStart("evidence");
            List<String[]> sorted = new ArrayList<>(evidence);
            sorted.sort((a, b) -> a[0].compareTo(b[0]));
            for (String[] kv : sorted) {
                g.writeStringField(kv[0], kv[1]);
            }
            g.writeEndObject();
            g.writeStringField("message", message);
            g.writeEndObject();
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return bytes.toByteArray();
    }
}
