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

$ImagingAction = 'stop_services'
$Result = [ordered]@{ ok = $true; changed = $false; action = $ImagingAction }
try {
    if ([string]::IsNullOrEmpty($GuestUser) -or $null -eq $GuestPassword) {
        throw 'no guest credential was passed: set IMAGING_GUEST_USER and IMAGING_GUEST_PASSWORD'
    }
    $GuestSecret = ConvertTo-SecureString -String $GuestPassword -AsPlainText -Force
    $GuestCredential = New-Object System.Management.Automation.PSCredential -ArgumentList $GuestUser, $GuestSecret
    # Inside the guest, over PowerShell Direct: stops each named Windows service (and the services that
    # depend on it, as Stop-Service -Force does) so a hotfix can replace the files its program has loaded:
    # Windows refuses to replace a running EXE or a loaded DLL. A service already stopped is left as it is.
    # The undo of this step is start_services.
    $Vm = 'NDXZOOM'
    $Services = @('InstrumentServer', 'ibex_gui')
    $request = ConvertTo-Json -Compress -InputObject ([ordered]@{ services = @($Services) })
    $answer = Invoke-Command -VMName $Vm -Credential $GuestCredential -ErrorAction Stop -ArgumentList $request -ScriptBlock {
        param([string] $RequestJson)
        Set-StrictMode -Version 3
        $ErrorActionPreference = 'Stop'
        $r = ConvertFrom-Json -InputObject $RequestJson
        $done = New-Object System.Collections.Generic.List[string]
        foreach ($name in @($r.services)) {
            $service = Get-Service -Name ([string]$name)
            if ([string]$service.Status -ne 'Stopped') {
                Stop-Service -Name ([string]$name) -Force
                $service.WaitForStatus('Stopped', [TimeSpan]::FromSeconds(120))
                $done.Add([string]$name)
            }
        }
        ConvertTo-Json -Compress -InputObject @($done.ToArray())
    }
    $Result['stopped'] = @(ConvertFrom-Json -InputObject ([string]$answer))
    $Result['changed'] = @($Result['stopped']).Count -gt 0
    Write-ImagingResult -Result $Result
}
catch {
    Write-ImagingFailure -ErrorRecord $_ -Result $Result
}
