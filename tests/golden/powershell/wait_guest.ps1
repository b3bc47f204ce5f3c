param([string] $GuestUser, [string] $GuestPassword, [string] $JoinUser, [string] $JoinPassword)
# A step script rendered by imaging.powershell; every value in it came through ps_literal.
Set-StrictMode -Version 3
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

function Write-ImagingResult {
    # The only way a step reports: one compressed JSON line between two marker lines.
    param([Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result)
    $json = ConvertTo-Json -InputObject $Result -Depth 8 -Compress
    Write-Output '<<<IMAGING-RESULT>>>'
    Write-Output $json
    Write-Output '<<<END-IMAGING-RESULT>>>'
}

function Write-ImagingFailure {
    # A failed step still reports in the same frame, saying whether it had already changed something.
    param(
        [Parameter(Mandatory = $true)] [System.Management.Automation.ErrorRecord] $ErrorRecord,
        [Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result
    )
    $where = ''
    if ($null -ne $ErrorRecord.InvocationInfo) { $where = [string]$ErrorRecord.InvocationInfo.PositionMessage }
    $Result['ok'] = $false
    $Result['error'] = [string]$ErrorRecord.Exception.Message
    $Result['where'] = $where
    # What kind of failure it was, for the provider's retry of a file another process holds (ObjectInUse)
    $Result['error_id'] = [string]$ErrorRecord.FullyQualifiedErrorId
    $Result['category'] = [string]$ErrorRecord.CategoryInfo.Category
    $Result['hresult'] = [int]$ErrorRecord.Exception.HResult
    Write-ImagingResult -Result $Result
}

function Initialize-ImagingFolder {
    # Creates a folder (and its parents) if it is missing; never touches an existing one.
    param([Parameter(Mandatory = $true)] [string] $Path)
    if (-not (Test-Path -LiteralPath $Path -PathType Container)) {
        New-Item -ItemType Directory -Path $Path -Force | Out-Null
    }
}

function Get-ImagingSha256 {
    param([Parameter(Mandatory = $true)] [string] $Path)
    (Get-FileHash -LiteralPath $Path -Algorithm SHA256).Hash.ToLowerInvariant()
}

$ImagingAction = 'wait_guest'
$Result = [ordered]@{ ok = $true; changed = $false; action = $ImagingAction }
try {
    if ([string]::IsNullOrEmpty($GuestUser) -or $null -eq $GuestPassword) {
        throw 'no guest credential was passed: set IMAGING_GUEST_USER and IMAGING_GUEST_PASSWORD'
    }
    $GuestSecret = ConvertTo-SecureString -String $GuestPassword -AsPlainText -Force
    $GuestCredential = New-Object System.Management.Automation.PSCredential -ArgumentList $GuestUser, $GuestSecret
    # Waits until Windows setup has finished in the guest and it answers over PowerShell Direct (the VMBus, no
    # network needed). A new OS disk specializes at its first boot (the answer file; it restarts once), and
    # PowerShell Direct answers only once setup created the guest credential's account; the step then also
    # waits for the setup state to say complete, and checks the guest took its computer name.
    $Vm = 'NDXZOOM'
    $TimeoutS = 600
    $ComputerName = 'NDXZOOM'
    $started = [DateTime]::UtcNow
    $deadline = $started.AddSeconds($TimeoutS)
    $answer = $null
    $lastError = 'not tried'
    while ($null -eq $answer -and [DateTime]::UtcNow -lt $deadline) {
        try {
            $seen = Invoke-Command -VMName $Vm -Credential $GuestCredential -ErrorAction Stop -ScriptBlock {
                $state = Get-ItemProperty -Path 'HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Setup\State' -ErrorAction SilentlyContinue
                $image = ''
                if ($null -ne $state) { $image = [string]$state.ImageState }
                '{0}|{1}' -f $env:COMPUTERNAME, $image
            }
            $name, $image = ([string]$seen).Split('|', 2)
            if ($image -and $image -ne 'IMAGE_STATE_COMPLETE') { throw "Windows setup is not finished yet ($image)" }
            $answer = $name
        }
        catch {
            $lastError = $_.Exception.Message
            Start-Sleep -Seconds 5
        }
    }
    if ($null -eq $answer) {
        throw "guest $Vm did not answer PowerShell Direct within $TimeoutS s (last error: $lastError)"
    }
    if ($ComputerName -and ([string]$answer).ToUpperInvariant() -ne $ComputerName.ToUpperInvariant()) {
        throw "guest $Vm answers as $answer, not $ComputerName: its answer file was not applied"
    }
    $Result['guest_name'] = [string]$answer
    $Result['waited_s'] = [int]([DateTime]::UtcNow - $started).TotalSeconds
    Write-ImagingResult -Result $Result
}
catch {
    Write-ImagingFailure -ErrorRecord $_ -Result $Result
}
