// Drives a VRM 1.0 avatar (UniVRM 0.1xx, Vrm10Instance) from koe: the mouth from the lip-sync
// data (aa/ih/ou/ee/oh), the face from the emotion of the segment being spoken.
using UniVRM10;
using UnityEngine;

namespace Koe
{
    public class KoeVrmFace : MonoBehaviour
    {
        public Vrm10Instance vrm;
        public KoeClient client;
        public KoeAudioPlayer player;
        [Tooltip("How fast the mouth follows the audio (1/s)")]
        public float mouthSpeed = 25f;
        [Tooltip("How fast the face changes expression (1/s)")]
        public float expressionSpeed = 6f;

        static readonly ExpressionPreset[] Mouth =
            { ExpressionPreset.aa, ExpressionPreset.ih, ExpressionPreset.ou, ExpressionPreset.ee, ExpressionPreset.oh };
        readonly float[] mouth = new float[5];
        ExpressionKey? target;    // the expression of the current emotion (none = neutral)
        float targetWeight;

        void OnEnable() { if (client != null) client.OnEmotion += SetEmotion; }
        void OnDisable() { if (client != null) client.OnEmotion -= SetEmotion; }

        // koe's expression names are the character file's `expression` values: VRM presets
        // (happy, angry, sad, relaxed, surprised, neutral) or custom expression names.
        void SetEmotion(string emotion, string expression)
        {
            if (target.HasValue) vrm.Runtime.Expression.SetWeight(target.Value, 0f);
            target = null;
            targetWeight = 0f;
            if (string.IsNullOrEmpty(expression) || expression == "neutral") return;
            if (expression == "smile") expression = "happy";
            target = System.Enum.TryParse(expression, out ExpressionPreset preset)
                ? ExpressionKey.CreateFromPreset(preset)
                : ExpressionKey.CreateCustom(expression);
        }

        void LateUpdate()
        {
            if (vrm == null || player == null) return;
            float step = 1f - Mathf.Exp(-mouthSpeed * Time.deltaTime);
            for (int k = 0; k < 5; k++)
            {
                mouth[k] = Mathf.Lerp(mouth[k], player.Vowels[k], step);
                vrm.Runtime.Expression.SetWeight(ExpressionKey.CreateFromPreset(Mouth[k]), mouth[k]);
            }
            if (target.HasValue)
            {
                targetWeight = Mathf.Lerp(targetWeight, 1f, 1f - Mathf.Exp(-expressionSpeed * Time.deltaTime));
                vrm.Runtime.Expression.SetWeight(target.Value, targetWeight);
            }
        }
    }
}
